;; The smallest WAGI handler: print a CGI header block and a body on stdout.
;; No toolchain needed; the gateway compiles WebAssembly text directly.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; The response: headers, an empty line, then the body.
  (data (i32.const 64) "Content-Type: text/plain; charset=utf-8\n\nHello from WebAssembly!\n")
  (func (export "_start")
    ;; One iovec at address 0: { base = 64, length = 65 }.
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 65))
    ;; fd_write(stdout, iovs, 1 iovec, where to put the bytes written)
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
