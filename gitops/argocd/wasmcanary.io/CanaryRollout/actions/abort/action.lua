-- All traffic back to stable at once: spec.abort, as `kubectl canary abort` sets it.
obj.spec.abort = true
return obj
