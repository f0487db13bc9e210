// Package luatest runs the Argo CD health and action scripts of wasmcanary.io/CanaryRollout the
// way Argo CD does (gopher-lua, `obj` global, the object's JSON as a Lua table, only the
// libraries Argo CD opens) on CanaryRollouts captured from real rollouts by
// controller/tests/gitops.rs (../testdata; GITOPS_LIVE_DIR reads another capture).
package luatest

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
)

const scripts = "../wasmcanary.io/CanaryRollout"

// -update rewrites ../testdata/actions/<action>.json, each action's output on its capture, which
// controller/tests/gitops.rs applies to a live rollout (the patch from capture to output).
var update = flag.Bool("update", false, "rewrite the actions' outputs in ../testdata/actions")

var actionNames = []string{"promote", "promote-full", "abort", "retry", "pause", "resume"}

// newVM opens what Argo CD's Lua VM opens: base, package, table, string, math, coroutine, and
// an `os` reachable only through require("os") with time and date.
func newVM() *lua.LState {
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
		{lua.CoroutineLibName, lua.OpenCoroutine},
	} {
		l.Push(l.NewFunction(lib.open))
		l.Push(lua.LString(lib.name))
		l.Call(1, 0)
	}
	l.PreloadModule("os", func(l *lua.LState) int {
		mod := l.NewTable()
		l.SetField(mod, "time", l.NewFunction(func(l *lua.LState) int {
			l.Push(lua.LNumber(time.Now().Unix()))
			return 1
		}))
		l.Push(mod)
		return 1
	})
	return l
}

func toLua(l *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		t := l.NewTable()
		for _, e := range v {
			t.Append(toLua(l, e))
		}
		return t
	case map[string]any:
		t := l.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(l, e))
		}
		return t
	default:
		panic(fmt.Sprintf("unexpected JSON value %T", v))
	}
}

// fromLua turns a table with keys 1..n into an array, any other table into an object (so an
// empty table is `{}`, as Argo CD reads it back).
func fromLua(v lua.LValue) any {
	switch v := v.(type) {
	case *lua.LNilType:
		return nil
	case lua.LBool:
		return bool(v)
	case lua.LNumber:
		return float64(v)
	case lua.LString:
		return string(v)
	case *lua.LTable:
		n := v.MaxN()
		count := 0
		v.ForEach(func(lua.LValue, lua.LValue) { count++ })
		if n > 0 && n == count {
			arr := make([]any, 0, n)
			for i := 1; i <= n; i++ {
				arr = append(arr, fromLua(v.RawGetInt(i)))
			}
			return arr
		}
		obj := map[string]any{}
		v.ForEach(func(k, e lua.LValue) { obj[k.String()] = fromLua(e) })
		return obj
	default:
		panic(fmt.Sprintf("unexpected Lua value %s", v.Type()))
	}
}

// run executes `file` with `obj` set to `object` and returns what the script returns.
func run(t *testing.T, file string, object map[string]any) lua.LValue {
	t.Helper()
	l := newVM()
	defer l.Close()
	l.SetGlobal("obj", toLua(l, object))
	if err := l.DoFile(filepath.Join(scripts, file)); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return l.Get(-1)
}

func testdata() string {
	if dir := os.Getenv("GITOPS_LIVE_DIR"); dir != "" {
		return dir
	}
	return "../testdata"
}

// captured reads a CanaryRollout that controller/tests/gitops.rs captured from a real rollout.
func captured(t *testing.T, name string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testdata(), name+".json"))
	if err != nil {
		t.Fatalf("captured rollout %s (written by `UPDATE_GITOPS_TESTDATA=1 cargo test -p wasm-canary-controller --test gitops`): %v", name, err)
	}
	var obj map[string]any
	if err := json.Unmarshal(raw, &obj); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return obj
}

func field(obj map[string]any, path ...string) any {
	var v any = obj
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// The captures: what the controller's status says at each point of a real rollout.
const (
	generationNotObserved = "progressing-generation-not-observed"
	progressing           = "progressing"
	pausedAtStep          = "paused-at-step"
	pausedByUser          = "paused-by-user"
	aborted               = "aborted"
	degraded              = "degraded"
	healthyAfterPromotion = "healthy-after-promotion"
)

func TestHealthFollowsThePhaseAndKeepsTheControllersMessage(t *testing.T) {
	for _, c := range []struct {
		capture, status, phase string
	}{
		{progressing, "Progressing", "Progressing"},
		{pausedAtStep, "Suspended", "Paused"},
		{pausedByUser, "Suspended", "Paused"},
		{aborted, "Degraded", "Aborted"},
		{degraded, "Degraded", "Degraded"},
		{healthyAfterPromotion, "Healthy", "Healthy"},
	} {
		t.Run(c.capture, func(t *testing.T) {
			obj := captured(t, c.capture)
			if got := field(obj, "status", "phase"); got != c.phase {
				t.Fatalf("the capture is not what its name says: phase %v, want %s", got, c.phase)
			}
			hs := fromLua(run(t, "health.lua", obj)).(map[string]any)
			if hs["status"] != c.status {
				t.Errorf("health %v, want %s (%v)", hs["status"], c.status, hs["message"])
			}
			want := field(obj, "status", "message")
			if want == nil {
				if msg, _ := hs["message"].(string); msg == "" {
					t.Errorf("no health message")
				}
			} else if hs["message"] != want {
				t.Errorf("health message %q, want the controller's %q", hs["message"], want)
			}
		})
	}
}

func TestHealthIsProgressingWhileTheControllerHasNotSeenTheLatestSpec(t *testing.T) {
	obj := captured(t, generationNotObserved)
	gen, _ := field(obj, "metadata", "generation").(float64)
	seen, _ := field(obj, "status", "observedGeneration").(float64)
	if !(seen < gen) {
		t.Fatalf("capture has observedGeneration %v, generation %v: not lagging", seen, gen)
	}
	hs := fromLua(run(t, "health.lua", obj)).(map[string]any)
	if hs["status"] != "Progressing" {
		t.Errorf("health %v (%v), want Progressing: the status (%v) describes the previous spec", hs["status"], hs["message"], field(obj, "status", "phase"))
	}
	if want := fmt.Sprintf("generation %d", int(gen)); !strings.Contains(hs["message"].(string), want) {
		t.Errorf("message %q does not name %s", hs["message"], want)
	}
}

func TestHealthOfARolloutTheControllerHasNotYetSeenIsProgressing(t *testing.T) {
	obj := captured(t, healthyAfterPromotion)
	delete(obj, "status")
	hs := fromLua(run(t, "health.lua", obj)).(map[string]any)
	if hs["status"] != "Progressing" {
		t.Errorf("health %v, want Progressing", hs["status"])
	}
}

func TestDiscoveryOffersOnlyTheActionsThatApplyNow(t *testing.T) {
	enabled := func(names ...string) map[string]bool {
		m := map[string]bool{}
		for _, n := range actionNames {
			m[n] = true
		}
		for _, n := range names {
			m[n] = false
		}
		return m
	}
	for _, c := range []struct {
		capture  string
		disabled map[string]bool
	}{
		{progressing, enabled("promote-full", "abort", "pause")},
		{pausedAtStep, enabled("promote", "promote-full", "abort", "pause")},
		{pausedByUser, enabled("promote-full", "abort", "resume")},
		{aborted, enabled("retry")},
		// The DestinationRule is gone and the canary never started: nothing to promote or
		// abort; a pause holds the rollout at step 1 once the DestinationRule is back.
		{degraded, enabled("pause")},
		{healthyAfterPromotion, enabled()},
	} {
		t.Run(c.capture, func(t *testing.T) {
			got := map[string]bool{}
			actions := run(t, "actions/discovery.lua", captured(t, c.capture)).(*lua.LTable)
			actions.ForEach(func(k, v lua.LValue) {
				got[k.String()] = lua.LVAsBool(v.(*lua.LTable).RawGetString("disabled"))
			})
			if !reflect.DeepEqual(got, c.disabled) {
				t.Errorf("disabled: got %v, want %v", got, c.disabled)
			}
		})
	}
}

// flatten maps every leaf of a JSON value to its path (`a.b.0.c`).
func flatten(prefix string, v any, out map[string]any) {
	switch v := v.(type) {
	case map[string]any:
		if len(v) == 0 {
			out[prefix] = map[string]any{}
		}
		for k, e := range v {
			flatten(prefix+"."+k, e, out)
		}
	case []any:
		for i, e := range v {
			flatten(fmt.Sprintf("%s.%d", prefix, i), e, out)
		}
	default:
		out[prefix] = v
	}
}

// changes lists what `after` changed in `before`: path -> new value (nil: removed).
func changes(before, after map[string]any) map[string]any {
	b, a := map[string]any{}, map[string]any{}
	flatten("", before, b)
	flatten("", after, a)
	diff := map[string]any{}
	for k, v := range a {
		if old, ok := b[k]; !ok || !reflect.DeepEqual(old, v) {
			diff[k] = v
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			diff[k] = nil
		}
	}
	return diff
}

func TestEachActionWritesExactlyWhatKubectlCanaryWrites(t *testing.T) {
	for _, c := range []struct {
		action, capture string
		want            func(obj map[string]any) map[string]any
	}{
		{"promote", pausedAtStep, func(obj map[string]any) map[string]any {
			return map[string]any{".metadata.annotations.wasmcanary.io/promote": "step:argocd-" + field(obj, "metadata", "resourceVersion").(string)}
		}},
		{"promote-full", pausedAtStep, func(obj map[string]any) map[string]any {
			return map[string]any{".metadata.annotations.wasmcanary.io/promote": "full:argocd-" + field(obj, "metadata", "resourceVersion").(string)}
		}},
		{"abort", progressing, func(map[string]any) map[string]any {
			return map[string]any{".spec.abort": true}
		}},
		{"retry", aborted, func(map[string]any) map[string]any {
			return map[string]any{".spec.abort": nil}
		}},
		{"pause", pausedAtStep, func(map[string]any) map[string]any {
			return map[string]any{".spec.paused": true}
		}},
		{"resume", pausedByUser, func(map[string]any) map[string]any {
			return map[string]any{".spec.paused": nil}
		}},
	} {
		t.Run(c.action, func(t *testing.T) {
			before := captured(t, c.capture)
			after := fromLua(run(t, "actions/"+c.action+"/action.lua", captured(t, c.capture))).(map[string]any)
			if got, want := changes(before, after), c.want(before); !reflect.DeepEqual(got, want) {
				t.Errorf("%s on %s changed %v, want exactly %v", c.action, c.capture, got, want)
			}
			checkOutput(t, c.action, c.capture, after)
		})
	}
}

// actionCaptures is which capture each action's recorded output starts from.
var actionCaptures = map[string]string{
	"promote": pausedAtStep, "promote-full": pausedAtStep, "abort": progressing,
	"retry": aborted, "pause": pausedAtStep, "resume": pausedByUser,
}

// checkOutput compares the action's output with ../testdata/actions/<action>.json (the file
// controller/tests/gitops.rs applies to a live rollout), or rewrites it with -update.
func checkOutput(t *testing.T, action, capture string, after map[string]any) {
	t.Helper()
	if actionCaptures[action] != capture {
		t.Fatalf("actionCaptures[%s] is %s, the test runs it on %s", action, actionCaptures[action], capture)
	}
	path := filepath.Join("../testdata/actions", action+".json")
	if *update {
		raw, err := json.MarshalIndent(map[string]any{"input": capture, "output": after}, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(raw, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./... -update writes it)", err)
	}
	var recorded struct {
		Input  string         `json:"input"`
		Output map[string]any `json:"output"`
	}
	if err := json.Unmarshal(raw, &recorded); err != nil {
		t.Fatal(err)
	}
	if recorded.Input != capture || !reflect.DeepEqual(recorded.Output, after) {
		t.Errorf("%s is not %s's output on %s: run go test ./... -update after changing the action or the captures", path, action, capture)
	}
}

func TestRetryAfterAnAnalysisAbortSetsAbortFirstAsKubectlCanaryDoes(t *testing.T) {
	// The controller aborted on a failed analysis: spec.abort was never set. kubectl canary
	// retry sets it, waits for the controller, then removes it; Argo CD makes one write per
	// action, so the first retry sets it and the second (offered once spec.abort is set) removes it.
	obj := captured(t, aborted)
	delete(obj["spec"].(map[string]any), "abort")
	obj["status"].(map[string]any)["analysisAborted"] = true
	retry := run(t, "actions/discovery.lua", obj).(*lua.LTable).RawGetString("retry").(*lua.LTable)
	if lua.LVAsBool(retry.RawGetString("disabled")) {
		t.Fatalf("retry is not offered after an analysis abort")
	}
	after := fromLua(run(t, "actions/retry/action.lua", obj)).(map[string]any)
	if got := changes(obj, after); !reflect.DeepEqual(got, map[string]any{".spec.abort": true}) {
		t.Errorf("first retry changed %v", got)
	}
}

func TestPromoteWithoutAResourceVersionStillWritesANewRequest(t *testing.T) {
	obj := captured(t, pausedAtStep)
	delete(obj["metadata"].(map[string]any), "resourceVersion")
	delete(obj["metadata"].(map[string]any), "annotations")
	after := fromLua(run(t, "actions/promote/action.lua", obj)).(map[string]any)
	v, _ := field(after, "metadata", "annotations", "wasmcanary.io/promote").(string)
	if !strings.HasPrefix(v, "step:argocd-") || len(v) <= len("step:argocd-") {
		t.Errorf("promote annotation %q", v)
	}
}

func TestTheCapturesAreCanaryRolloutsFromTheAPIServer(t *testing.T) {
	entries, err := os.ReadDir(testdata())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".json") {
			obj := captured(t, strings.TrimSuffix(e.Name(), ".json"))
			if obj["kind"] != "CanaryRollout" || field(obj, "metadata", "uid") == nil || field(obj, "metadata", "managedFields") == nil {
				t.Errorf("%s is not a CanaryRollout as the API server returns it", e.Name())
			}
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	if len(names) < 7 {
		t.Errorf("captures: %v", names)
	}
}
