// deny-latest-go is deny-latest written with the Go SDK: it refuses run Pods whose images
// float (tagged latest, or untagged), unless pinned by digest. Same settings and messages as
// the Rust example, so the two can be compared (docs/plugins.md: what a Go plugin costs).
//
// Settings: {"containers": "all" | "worker", "allowDigest": true}
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	sdk "workerpool-operator/plugins/sdk-go"
)

type settings struct {
	Containers  string `json:"containers"`
	AllowDigest *bool  `json:"allowDigest"`
}

func parse(raw json.RawMessage) (settings, error) {
	s := settings{Containers: "all"}
	if len(raw) > 0 && string(raw) != "null" {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&s); err != nil {
			return s, fmt.Errorf("settings: %v", err)
		}
	}
	if s.Containers != "all" && s.Containers != "worker" {
		return s, fmt.Errorf("containers must be \"all\" or \"worker\", not %q", s.Containers)
	}
	return s, nil
}

func hook(in *sdk.Input) sdk.Output {
	s, err := parse(in.Settings)
	if err != nil {
		return sdk.Deny("%v", err)
	}
	allowDigest := s.AllowDigest == nil || *s.AllowDigest
	var problems []string
	for _, c := range in.Pod.Containers() {
		if s.Containers == "worker" && c.Name() != "worker" {
			continue
		}
		img := sdk.ParseImage(c.Image())
		latest := img.Tag == "" || img.Tag == "latest"
		pinned := allowDigest && img.Digest != ""
		if latest && !pinned {
			problems = append(problems, fmt.Sprintf("container %q uses %q", c.Name(), c.Image()))
		}
	}
	if len(problems) > 0 {
		return sdk.Deny("images must be pinned to a tag other than latest (or a digest): %s",
			strings.Join(problems, ", "))
	}
	return sdk.Allow()
}

func init() {
	sdk.Register(hook, func(raw json.RawMessage) error {
		_, err := parse(raw)
		return err
	})
}

func main() {}
