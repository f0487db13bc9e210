-- Hold at the current step, traffic unchanged: spec.paused, as `kubectl canary pause`.
obj.spec.paused = true
return obj
