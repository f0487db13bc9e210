-- End the current pause step: annotation wasmcanary.io/promote: step:<id>, as `kubectl canary
-- promote` writes it. The id is new for every write to the rollout (its resourceVersion), so a
-- second promote is a second request, never a repeat the controller would skip.
local id = obj.metadata.resourceVersion
if id == nil then
  local os = require("os")
  id = tostring(os.time())
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["wasmcanary.io/promote"] = "step:argocd-" .. id
return obj
