"""wagi: a WAGI gateway that serves WebAssembly (WASI) modules as CGI-style HTTP handlers."""

__version__ = "0.1.0"
