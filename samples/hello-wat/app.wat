;; hello-wat: the estarter ABI with no toolchain (wasmtime loads WAT text directly).
;; Logs, calls system.ping, shows a notification with ui.notify, exits 0.
(module
  (import "estarter" "log" (func $log (param i32 i32 i32)))
  (import "estarter" "api_call" (func $api_call (param i32 i32) (result i32)))
  (import "estarter" "api_response" (func $api_response (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))

  (memory (export "memory") 1)
  ;; Requests and messages at fixed offsets; responses go to 1024..2047.
  (data (i32.const 0) "hello from wat")                                  ;; 14 bytes
  (data (i32.const 64) "{\"method\":\"system.ping\",\"params\":{}}")      ;; 36 bytes
  (data (i32.const 128)
    "{\"method\":\"ui.notify\",\"params\":{\"title\":\"hello-wat\",\"message\":\"Hello from WAT!\"}}")
                                                                          ;; 81 bytes
  (data (i32.const 256) "an api call failed")                            ;; 18 bytes

  ;; Performs the request at ptr/len and logs its response; exits 1 on an ABI error.
  (func $call_and_log (param $ptr i32) (param $len i32)
    (local $n i32)
    (local.set $n (call $api_call (local.get $ptr) (local.get $len)))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then
        (call $log (i32.const 3) (i32.const 256) (i32.const 18))
        (call $proc_exit (i32.const 1))))
    (local.set $n (call $api_response (i32.const 1024) (i32.const 1024)))
    (call $log (i32.const 1) (i32.const 1024) (local.get $n)))

  (func (export "_start")
    (call $log (i32.const 1) (i32.const 0) (i32.const 14))
    (call $call_and_log (i32.const 64) (i32.const 36))
    (call $call_and_log (i32.const 128) (i32.const 81))))
