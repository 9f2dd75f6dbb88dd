package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// A builder stage NAME of a Dockerfile is built on this machine by the script
// <stages dir>/NAME: `NAME OUTDIR` writes what the stage's /out holds into OUTDIR, and
// `NAME --outputs` lists the paths (relative to /out; a trailing "/" for a directory) it writes.
// The Dockerfile's builder stage runs the same script (RUN images/stages/NAME /out), so the
// engine build and the local build cannot drift apart.
type StageScripts struct {
	Dir string
	// Env is added to each script's environment: the Dockerfile's global ARGs, as an engine
	// passes them to the stage's RUN.
	Env []string
}

// Outputs asks the stage's script what it writes.
func (s StageScripts) Outputs(stage string) ([]string, error) {
	script, err := s.script(stage)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(script, "--outputs")
	cmd.Env = append(os.Environ(), s.Env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s --outputs failed: %v: %s", script, err, strings.TrimSpace(stderr.String()))
	}
	var outputs []string
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			outputs = append(outputs, line)
		}
	}
	if len(outputs) == 0 {
		return nil, fmt.Errorf("%s --outputs listed nothing", script)
	}
	return outputs, nil
}

// Build runs the stage's script into outDir (emptied first) and checks that it wrote every
// output it declares.
func (s StageScripts) Build(stage, outDir string) error {
	script, err := s.script(stage)
	if err != nil {
		return err
	}
	outputs, err := s.Outputs(stage)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(outDir); err != nil {
		return err
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return err
	}
	cmd := exec.Command(script, outDir)
	cmd.Env = append(os.Environ(), s.Env...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr // stdout is ocibuild's report
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building stage %s (%s %s): %w", stage, script, outDir, err)
	}
	for _, o := range outputs {
		info, err := os.Lstat(filepath.Join(outDir, filepath.FromSlash(strings.TrimSuffix(o, "/"))))
		if err != nil {
			return fmt.Errorf("stage %s: %s declares %s%s but did not write it", stage, script, StageOut+"/", o)
		}
		if strings.HasSuffix(o, "/") != info.IsDir() {
			return fmt.Errorf("stage %s: %s declares %s%s as a %s", stage, script, StageOut+"/", o, map[bool]string{true: "directory", false: "file"}[strings.HasSuffix(o, "/")])
		}
	}
	return nil
}

func (s StageScripts) script(stage string) (string, error) {
	script := filepath.Join(s.Dir, stage)
	info, err := os.Stat(script)
	if err != nil || info.IsDir() || info.Mode()&0o111 == 0 {
		known, _ := s.Known()
		return "", fmt.Errorf("there is no local build for stage %s: %s is not an executable script (known stages: %s)",
			stage, script, strings.Join(known, ", "))
	}
	return script, nil
}

// Known lists the stages that have a script.
func (s StageScripts) Known() ([]string, error) {
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if info, err := e.Info(); err == nil && !e.IsDir() && info.Mode()&0o111 != 0 {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

// Check verifies, without building anything, that the local build can produce everything the
// final stage copies: each COPY --from names a stage with a script and a path inside what
// that script declares, and each COPY from the context names a file that exists.
func Check(d *Dockerfile, spec *ImageSpec, scripts StageScripts, context string) error {
	outputs := map[string][]string{}
	for _, stage := range spec.StageNames() {
		o, err := scripts.Outputs(stage)
		if err != nil {
			return &DockerfileError{Path: d.Path, Line: d.Stages[stage], Msg: err.Error()}
		}
		outputs[stage] = o
	}
	for _, c := range spec.Copies {
		for _, src := range c.Sources {
			if c.From == "" {
				host := filepath.Join(context, filepath.FromSlash(path.Clean("/"+src)))
				if _, err := os.Stat(host); err != nil {
					return &DockerfileError{Path: d.Path, Line: c.Line, Msg: fmt.Sprintf("COPY %s: not in the build context %s", src, context)}
				}
				continue
			}
			rel, ok := underOut(src)
			if !ok {
				return &DockerfileError{Path: d.Path, Line: c.Line, Msg: fmt.Sprintf("COPY --from=%s %s: a stage's local build provides only its %s directory", c.From, src, StageOut)}
			}
			if !provided(rel, outputs[c.From]) {
				return &DockerfileError{Path: d.Path, Line: c.Line, Msg: fmt.Sprintf(
					"COPY --from=%s %s: images/stages/%s does not produce it (it writes %s under %s)",
					c.From, src, c.From, strings.Join(outputs[c.From], " "), StageOut)}
			}
		}
	}
	return nil
}

// provided: rel ("" for /out itself) is a declared output, inside a declared directory, or a
// directory that holds declared outputs.
func provided(rel string, outputs []string) bool {
	if rel == "" {
		return true
	}
	for _, o := range outputs {
		dir := strings.HasSuffix(o, "/")
		o = strings.TrimSuffix(o, "/")
		if rel == o || (dir && strings.HasPrefix(rel, o+"/")) || strings.HasPrefix(o, rel+"/") {
			return true
		}
	}
	return false
}
