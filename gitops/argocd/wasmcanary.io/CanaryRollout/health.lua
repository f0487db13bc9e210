-- Argo CD health of a wasmcanary.io CanaryRollout, read from the status its controller writes.
-- Healthy: fully on one version. Suspended: waiting at a pause step or spec.paused (a promote
-- or resume continues it). Degraded: aborted, or a spec the controller cannot execute.
-- Progressing: moving through steps, or the controller has not yet seen the latest spec.
local hs = {}

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the wasm-canary controller to pick up the rollout"
  return hs
end

-- A status written for an older spec says nothing about the current one.
local generation = tonumber(obj.metadata.generation)
local observed = tonumber(obj.status.observedGeneration)
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the wasm-canary controller to observe generation " .. tostring(generation)
  return hs
end

local phase = obj.status.phase
local message = obj.status.message
local step = obj.status.currentStep

local function with_default(default)
  if message ~= nil and message ~= "" then
    return message
  end
  return default
end

if phase == "Healthy" then
  hs.status = "Healthy"
  hs.message = with_default("Fully on one version")
elseif phase == "Paused" then
  hs.status = "Suspended"
  if step ~= nil then
    hs.message = with_default("Paused at step " .. step)
  else
    hs.message = with_default("Paused")
  end
elseif phase == "Aborted" then
  hs.status = "Degraded"
  hs.message = with_default("Aborted: all traffic on stable")
elseif phase == "Degraded" then
  hs.status = "Degraded"
  hs.message = with_default("The controller cannot execute the rollout")
elseif phase == "Progressing" then
  hs.status = "Progressing"
  hs.message = with_default("Moving through the canary steps")
else
  hs.status = "Unknown"
  hs.message = "Unknown CanaryRollout phase " .. tostring(phase)
end
return hs
