;; A shared memory needs the WebAssembly threads feature, which wasmlet does
;; not run: Create must fail with an error that names the feature.
(module
  (memory 1 1 shared)
  (func (export "_start")))
