;; A core module whose start function never returns. Instantiating it at
;; Create would hang CreateContainer; after Start it is a running guest
;; that StopContainer ends like any other.
(module
  (func $start (loop $forever (br $forever)))
  (start $start)
  (func (export "_start")))
