;; Sleeps three seconds (WASI poll_oneoff on a relative clock), then answers.
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 300) "Content-Type: text/plain\n\nslow and done\n")
  (func (export "_start")
    (i64.store (i32.const 24) (i64.const 3000000000))
    (drop (call $poll (i32.const 0) (i32.const 128) (i32.const 1) (i32.const 200)))
    (i32.store (i32.const 400) (i32.const 300))
    (i32.store (i32.const 404) (i32.const 40))
    (drop (call $write (i32.const 1) (i32.const 400) (i32.const 1) (i32.const 408)))))
