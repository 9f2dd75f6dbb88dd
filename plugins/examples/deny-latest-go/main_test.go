package main

import (
	"encoding/json"
	"testing"

	sdk "workerpool-operator/plugins/sdk-go"
)

func run(t *testing.T, image string) sdk.Output {
	t.Helper()
	input := `{"abi":1,"settings":{},"context":{"pool":{"name":"p","namespace":"n"},"worker":{"name":"w","namespace":"n"},"run":{"runId":"01H","stage":"planning","attempt":1}},
	  "pod":{"spec":{"initContainers":[{"name":"init","image":"launcher:v1"}],"containers":[{"name":"launcher-grpc","image":"launcher:v1"},{"name":"worker","image":"` + image + `"}]}},
	  "runnerImage":"` + image + `","allowedRunnerImageHosts":[]}`
	var out sdk.Output
	if err := json.Unmarshal(sdk.Evaluate([]byte(input)), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLatestIsDenied(t *testing.T) {
	out := run(t, "ubuntu")
	want := `images must be pinned to a tag other than latest (or a digest): container "worker" uses "ubuntu"`
	if out.Allowed || out.Message != want {
		t.Fatalf("got %+v", out)
	}
}

func TestPinnedPasses(t *testing.T) {
	if out := run(t, "ubuntu:24.04"); !out.Allowed {
		t.Fatalf("got %+v", out)
	}
}

func TestBadSettingsAreRefused(t *testing.T) {
	var out struct {
		Valid   bool   `json:"valid"`
		Message string `json:"message"`
	}
	json.Unmarshal(sdk.ValidateSettings([]byte(`{"abi":1,"settings":{"containers":"some"}}`)), &out)
	if out.Valid || out.Message != `containers must be "all" or "worker", not "some"` {
		t.Fatalf("got %+v", out)
	}
}
