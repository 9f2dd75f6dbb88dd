// Command ocibuild writes an OCI image archive from a Dockerfile's final `FROM scratch` stage
// without a container engine: it reads the stage's COPY, ENV, USER, WORKDIR, LABEL,
// ENTRYPOINT and CMD itself, and fills each `COPY --from=<stage>` with the local build of that
// stage (images/stages/<stage>), the same script the Dockerfile's builder stage runs.
// One uncompressed layer, every timestamp 0, files root-owned unless COPY --chown says
// otherwise: the same inputs give the same digests. See images/README.md.
//
//	ocibuild stages -f DOCKERFILE                 the stages its final stage copies from
//	ocibuild args   -f DOCKERFILE                 its global ARG defaults, NAME=VALUE
//	ocibuild check  -f DOCKERFILE -context DIR -stages-dir DIR
//	ocibuild build  -f DOCKERFILE -context DIR -stages-dir DIR -work DIR -name REF -out FILE
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "ocibuild: %v\n", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: ocibuild stages|args|check|build -f DOCKERFILE [-context DIR -stages-dir DIR -work DIR -name REF -out FILE]")
	os.Exit(2)
}

func run(cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	file := fs.String("f", "", "the Dockerfile")
	context := fs.String("context", ".", "the build context COPY without --from reads from")
	stagesDir := fs.String("stages-dir", "", "the directory of the stage scripts")
	work := fs.String("work", "", "where the stages are built")
	name := fs.String("name", "", "the image reference, e.g. localhost/workerpool-operator/pause:0.1.0")
	out := fs.String("out", "", "the archive to write")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *file == "" {
		usage()
	}
	d, err := ReadDockerfile(*file)
	if err != nil {
		return err
	}
	spec, err := d.Spec()
	if err != nil {
		return err
	}
	scripts := StageScripts{Dir: *stagesDir, Env: argEnv(d)}

	switch cmd {
	case "stages":
		for _, s := range spec.StageNames() {
			fmt.Println(s)
		}
		return nil
	case "args":
		for _, kv := range argEnv(d) {
			fmt.Println(kv)
		}
		return nil
	case "check":
		if *stagesDir == "" {
			return errors.New("check needs -stages-dir")
		}
		return Check(d, spec, scripts, *context)
	case "build":
		if *stagesDir == "" || *work == "" || *name == "" || *out == "" {
			return errors.New("build needs -stages-dir, -work, -name and -out")
		}
		return build(d, spec, scripts, *context, *work, *name, *out)
	}
	usage()
	return nil
}

func build(d *Dockerfile, spec *ImageSpec, scripts StageScripts, context, work, name, out string) error {
	if err := Check(d, spec, scripts, context); err != nil {
		return err
	}
	sources := Sources{Context: context, Stages: map[string]string{}}
	for _, stage := range spec.StageNames() {
		dir := filepath.Join(work, stage)
		if err := scripts.Build(stage, dir); err != nil {
			return &DockerfileError{Path: d.Path, Line: d.Stages[stage], Msg: err.Error()}
		}
		sources.Stages[stage] = dir
	}
	tree := Tree{}
	for _, c := range spec.Copies {
		if err := tree.Apply(c, sources); err != nil {
			return &DockerfileError{Path: d.Path, Line: c.Line, Msg: err.Error()}
		}
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	createdBy := "ocibuild -f " + d.Path
	if rel, err := filepath.Rel(context, d.Path); err == nil {
		createdBy = "ocibuild -f " + filepath.ToSlash(rel)
	}
	built, err := WriteArchive(tree, spec.Config, name, createdBy, out)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s %s (layer %.1f MiB)\n", out, built.Ref, built.ManifestDigest, float64(built.LayerSize)/(1<<20))
	return nil
}

// argEnv is the Dockerfile's global ARG defaults as NAME=VALUE, sorted.
func argEnv(d *Dockerfile) []string {
	env := make([]string, 0, len(d.GlobalArgs))
	for k, v := range d.GlobalArgs {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env
}
