;; {{name}}: a WAGI module in WebAssembly text. It prints a CGI response on stdout:
;; header lines, an empty line, then the body.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; The response, at address 64. Its length in bytes is set in `_start` below.
  (data (i32.const 64) "{{response}}")
  (func (export "_start")
    ;; One iovec at address 0: { base = 64, length = {{response_length}} }.
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {{response_length}}))
    ;; fd_write(stdout, the iovecs, 1 of them, where to put the count written)
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
