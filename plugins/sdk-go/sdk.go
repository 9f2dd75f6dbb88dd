// Package sdk writes workerpool-operator hook plugins in Go, for GOOS=wasip1 GOARCH=wasm.
//
// A plugin is a reactor module built with -buildmode=c-shared. It registers its hook in init()
// and has an empty main:
//
//	package main
//
//	import sdk "workerpool-operator/plugins/sdk-go"
//
//	func init() {
//		sdk.Register(func(in *sdk.Input) sdk.Output {
//			if in.RunnerImage == "" {
//				return sdk.Deny("no runner image")
//			}
//			return sdk.Allow()
//		}, nil)
//	}
//
//	func main() {}
//
// Build: GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -o hook.wasm .
//
// The package exports the ABI (workerpool_abi_v1, alloc, validate_settings, evaluate; the Go
// toolchain adds _initialize), so a plugin needs no exports of its own. The Pod is kept as
// generic JSON (Object), so fields this package does not know survive a round trip; typed
// helpers cover what hooks usually touch. See docs/plugins.md.
package sdk

import (
	"encoding/json"
	"fmt"
)

// ABIVersion is the ABI version this package speaks.
const ABIVersion = 1

// Input is what a hook receives.
type Input struct {
	ABI                     int             `json:"abi"`
	Settings                json.RawMessage `json:"settings"`
	Context                 Context         `json:"context"`
	Pod                     Object          `json:"pod"`
	RunnerImage             string          `json:"runnerImage"`
	AllowedRunnerImageHosts []string        `json:"allowedRunnerImageHosts"`
}

// Context is the run's pool, worker and run.
type Context struct {
	Pool   Pool   `json:"pool"`
	Worker Worker `json:"worker"`
	Run    Run    `json:"run"`
}

// Pool is the WorkerPool the run belongs to.
type Pool struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Spec        json.RawMessage   `json:"spec,omitempty"`
}

// Worker is the Worker that takes the run.
type Worker struct {
	Name      string            `json:"name"`
	Namespace string            `json:"namespace"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// Run is the run stage the Pod processes.
type Run struct {
	RunID              string            `json:"runId"`
	Stage              string            `json:"stage"`
	Attempt            int               `json:"attempt"`
	RunnerImage        string            `json:"runnerImage,omitempty"`
	LauncherImage      string            `json:"launcherImage,omitempty"`
	RunTimeoutSeconds  *int64            `json:"runTimeoutSeconds,omitempty"`
	LogsTimeoutSeconds *int64            `json:"logsTimeoutSeconds,omitempty"`
	Metadata           map[string]string `json:"metadata,omitempty"`
}

// Output is what a hook returns. Nil fields leave that part of the input unchanged.
type Output struct {
	Allowed                 bool     `json:"allowed"`
	Message                 string   `json:"message,omitempty"`
	Pod                     Object   `json:"pod,omitempty"`
	RunnerImage             string   `json:"runnerImage,omitempty"`
	AllowedRunnerImageHosts []string `json:"allowedRunnerImageHosts,omitempty"`
}

// Allow allows the run unchanged.
func Allow() Output { return Output{Allowed: true} }

// Deny denies the run with a message the user sees.
func Deny(format string, args ...any) Output {
	return Output{Allowed: false, Message: fmt.Sprintf(format, args...)}
}

// WithPod allows the run with this Pod instead.
func (o Output) WithPod(pod Object) Output { o.Pod = pod; return o }

// WithRunnerImage sets a new runner image; the operator writes it into the worker container.
func (o Output) WithRunnerImage(image string) Output { o.RunnerImage = image; return o }

// Hook decides about one run.
type Hook func(in *Input) Output

// Validator checks settings once, when the operator loads the plugin. Nil accepts anything.
type Validator func(settings json.RawMessage) error

var (
	hook      Hook
	validator Validator
)

// Register installs the plugin's hook and settings validator. Call it from init().
func Register(h Hook, v Validator) {
	hook = h
	validator = v
}

// Evaluate runs the registered hook on an input document and returns the output document.
// The ABI export calls it; tests can too, with no wasm involved.
func Evaluate(input []byte) []byte {
	var in Input
	var out Output
	switch {
	case hook == nil:
		out = Deny("the plugin registered no hook (call sdk.Register in init)")
	default:
		if err := json.Unmarshal(input, &in); err != nil {
			out = Deny("the plugin could not read its input: %v", err)
		} else {
			out = hook(&in)
		}
	}
	bytes, err := json.Marshal(out)
	if err != nil {
		bytes, _ = json.Marshal(Deny("the plugin could not write its output: %v", err))
	}
	return bytes
}

type validateInput struct {
	Settings json.RawMessage `json:"settings"`
}

type validateOutput struct {
	Valid   bool   `json:"valid"`
	Message string `json:"message,omitempty"`
}

// ValidateSettings runs the registered validator on a validate_settings input document.
func ValidateSettings(input []byte) []byte {
	var in validateInput
	out := validateOutput{Valid: true}
	if err := json.Unmarshal(input, &in); err != nil {
		out = validateOutput{Message: fmt.Sprintf("settings: %v", err)}
	} else if validator != nil {
		if err := validator(in.Settings); err != nil {
			out = validateOutput{Message: err.Error()}
		}
	}
	bytes, _ := json.Marshal(out)
	return bytes
}
