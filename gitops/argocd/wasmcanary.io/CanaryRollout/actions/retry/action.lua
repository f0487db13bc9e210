-- Start the aborted canary again from step 1: spec.abort removed, as `kubectl canary retry`.
-- After an abort decided by a failed analysis, spec.abort was never set: the controller retries
-- once it has seen spec.abort set and then removed, so this first sets it (the rollout stays
-- aborted) and the next retry removes it. `kubectl canary retry` makes both writes at once.
if obj.spec.abort == true then
  obj.spec.abort = nil
else
  obj.spec.abort = true
end
return obj
