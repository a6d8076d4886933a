;; A core module whose start function reads secret/input.txt (the
;; run-as-user pod's 0600 root file, mounted at /secret) and prints it.
;; Start functions run when the module is instantiated: if that happened
;; at Create, before the pod's user and the drop of privileges, root
;; would read the file. It must print "start: denied".
(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "secret/input.txt")
  (data (i32.const 32) "start: read: ")
  (data (i32.const 64) "start: denied\n")
  ;; 128: an iovec for fd_write; 136: one for fd_read; 160: the opened fd;
  ;; 164: bytes read; 168: bytes written; 256: the buffer.
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 128) (local.get $ptr))
    (i32.store (i32.const 132) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 128) (i32.const 1) (i32.const 168))))
  (func $start
    ;; fd 3 is the preopened /; rights: fd_read (2).
    (if (i32.eqz (call $path_open (i32.const 3) (i32.const 1) (i32.const 0) (i32.const 16)
                   (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 160)))
      (then
        (i32.store (i32.const 136) (i32.const 256))
        (i32.store (i32.const 140) (i32.const 1024))
        (drop (call $fd_read (i32.load (i32.const 160)) (i32.const 136) (i32.const 1) (i32.const 164)))
        (call $print (i32.const 32) (i32.const 13))
        (call $print (i32.const 256) (i32.load (i32.const 164))))
      (else (call $print (i32.const 64) (i32.const 14)))))
  (start $start)
  (func (export "_start")))
