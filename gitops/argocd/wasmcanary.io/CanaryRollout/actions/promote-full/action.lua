-- Skip every remaining step: annotation wasmcanary.io/promote: full:<id>, as `kubectl canary
-- promote --full` writes it (the id as in the promote action).
local id = obj.metadata.resourceVersion
if id == nil then
  local os = require("os")
  id = tostring(os.time())
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["wasmcanary.io/promote"] = "full:argocd-" .. id
return obj
