-- Continue from the current step: spec.paused removed, as `kubectl canary resume`.
obj.spec.paused = nil
return obj
