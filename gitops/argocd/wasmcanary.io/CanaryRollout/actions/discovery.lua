-- Which of the CanaryRollout actions make sense now. Each does what `kubectl canary` does:
-- the same field on the rollout, so the controller cannot tell the two apart.
local actions = {}

local status = obj.status or {}
local spec = obj.spec or {}
local phase = status.phase
local user_paused = spec.paused == true
local abort_requested = spec.abort == true
-- After an abort decided by a failed analysis, spec.abort was never set (see retry).
local aborted_by_analysis = status.analysisAborted == true and not abort_requested
local aborted = abort_requested or status.aborted == true
-- A canary exists from the first step until it is promoted or replaced.
local canary_running = status.canaryHash ~= nil and phase ~= "Healthy"

actions["promote"] = {["disabled"] = not (phase == "Paused" and not user_paused and not aborted)}
actions["promote-full"] = {["disabled"] = not (canary_running and not aborted)}
actions["abort"] = {["disabled"] = not canary_running or abort_requested}
actions["retry"] = {["disabled"] = not (abort_requested or aborted_by_analysis)}
actions["pause"] = {["disabled"] = user_paused or aborted or phase == "Healthy"}
actions["resume"] = {["disabled"] = not user_paused}

return actions
