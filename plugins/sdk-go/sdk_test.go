package sdk

import (
	"encoding/json"
	"testing"
)

func TestEvaluateRoundTripsUnknownPodFields(t *testing.T) {
	Register(func(in *Input) Output {
		for _, c := range in.Pod.Containers() {
			if c.Name() == "worker" {
				c.SetImage("mirror.example.com/" + c.Image())
			}
		}
		in.Pod.SetLabel("team", "a")
		return Allow().WithPod(in.Pod)
	}, nil)
	input := `{"abi":1,"settings":{},"context":{"pool":{"name":"p","namespace":"n"},"worker":{"name":"w","namespace":"n"},"run":{"runId":"01H","stage":"planning","attempt":1}},
	  "pod":{"metadata":{"name":"x"},"spec":{"containers":[{"name":"worker","image":"ubuntu","futureField":1}]}},"runnerImage":"ubuntu","allowedRunnerImageHosts":[]}`
	var out Output
	if err := json.Unmarshal(Evaluate([]byte(input)), &out); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(out.Pod)
	want := `{"metadata":{"labels":{"team":"a"},"name":"x"},"spec":{"containers":[{"futureField":1,"image":"mirror.example.com/ubuntu","name":"worker"}]}}`
	if string(got) != want {
		t.Fatalf("pod = %s, want %s", got, want)
	}
}

func TestParseImageFollowsDockerRules(t *testing.T) {
	cases := map[string]Image{
		"ubuntu":                             {Host: "docker.io", Repository: "library/ubuntu"},
		"localhost:5000/a/b:1":               {Host: "localhost:5000", Repository: "a/b", Tag: "1"},
		"ghcr.io/x/y@sha256:ab":              {Host: "ghcr.io", Repository: "x/y", Digest: "sha256:ab"},
		"index.docker.io/someone/img:latest": {Host: "docker.io", Repository: "someone/img", Tag: "latest"},
	}
	for ref, want := range cases {
		if got := ParseImage(ref); got != want {
			t.Errorf("ParseImage(%q) = %+v, want %+v", ref, got, want)
		}
	}
}
