package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The project's own Dockerfiles: every COPY --from names a stage that images/stages can build
// and a path its script writes, so `images/build` can make every image an engine makes.
func TestEveryDockerfileOfTheProjectCanBeBuiltLocally(t *testing.T) {
	files, err := filepath.Glob("../*/Dockerfile")
	if err != nil || len(files) == 0 {
		t.Fatalf("no images/*/Dockerfile found (%v)", err)
	}
	for _, f := range files {
		d, err := ReadDockerfile(f)
		if err != nil {
			t.Fatal(err)
		}
		spec, err := d.Spec()
		if err != nil {
			t.Fatal(err)
		}
		if len(spec.StageNames()) == 0 {
			t.Errorf("%s copies from no stage", f)
		}
		if err := Check(d, spec, StageScripts{Dir: "../stages", Env: argEnv(d)}, "../.."); err != nil {
			t.Errorf("%v", err)
		}
	}
}

func TestACopyFromAStageWithoutAScriptIsRefused(t *testing.T) {
	err := check(t, map[string]string{"tool": "bin/tool"}, `
FROM golang AS tool
FROM golang AS other
FROM scratch
COPY --from=tool /out/bin/tool /usr/bin/tool
COPY --from=other /out/x /x
`)
	wantError(t, err, "Dockerfile:3: there is no local build for stage other", "known stages: tool")
}

func TestACopyOfAPathTheStageScriptDoesNotWriteIsRefused(t *testing.T) {
	err := check(t, map[string]string{"tool": "bin/tool\nshare/"}, `
FROM golang AS tool
FROM scratch
COPY --from=tool /out/share/doc/readme /doc/readme
COPY --from=tool /out/lib/libtool.so /lib/
`)
	wantError(t, err, "Dockerfile:5: COPY --from=tool /out/lib/libtool.so: images/stages/tool does not produce it (it writes bin/tool share/ under /out)")
}

func TestACopyFromOutsideTheStagesOutIsRefused(t *testing.T) {
	err := check(t, map[string]string{"tool": "bin/tool"}, `
FROM golang AS tool
FROM scratch
COPY --from=tool /usr/local/bin/tool /tool
`)
	wantError(t, err, "provides only its /out directory")
}

func TestACopyFromAnImageOrAMissingContextFileIsRefused(t *testing.T) {
	_, err := ParseSpec(t, "FROM scratch\nCOPY --from=busybox:1.36 /bin/sh /bin/sh\n")
	wantError(t, err, "Dockerfile:2: COPY --from=busybox:1.36: no stage of that name")
	err = check(t, map[string]string{}, "FROM scratch\nCOPY etc/missing /etc/missing\n")
	wantError(t, err, "Dockerfile:2: COPY etc/missing: not in the build context")
}

func TestTheFinalStageMustBeScratchAndRunNothing(t *testing.T) {
	_, err := ParseSpec(t, "FROM golang AS b\nFROM debian:bookworm\nCOPY --from=b /out/x /x\n")
	wantError(t, err, "Dockerfile:2: the final stage is FROM debian:bookworm: the OCI builder needs FROM scratch")
	_, err = ParseSpec(t, "FROM scratch\nRUN echo hi\n")
	wantError(t, err, "Dockerfile:2: RUN in the final stage")
	_, err = ParseSpec(t, "FROM scratch\nHEALTHCHECK CMD true\n")
	wantError(t, err, "HEALTHCHECK is not supported in the final stage")
	_, err = ParseSpec(t, "FROM golang\nFROM scratch\n")
	wantError(t, err, `Dockerfile:1: stage "golang" has no name`)
}

func TestAStageScriptThatDoesNotWriteWhatItDeclaresFailsTheBuild(t *testing.T) {
	dir := t.TempDir()
	scripts := writeScripts(t, dir, map[string]string{"tool": "bin/tool"})
	err := scripts.Build("tool", filepath.Join(dir, "work"))
	wantError(t, err, "stage tool: ", "declares /out/bin/tool but did not write it")
}

func TestTheConfigIsTheFinalStages(t *testing.T) {
	spec, err := ParseSpec(t, `# syntax=docker/dockerfile:1
ARG VERSION=1.2.3
FROM golang AS tool
ARG VERSION
RUN build \
 && more
FROM scratch
ARG VERSION
ENV HOME=/home/u LANG="C.UTF-8"
ENV PATH /bin
LABEL org.opencontainers.image.version="${VERSION}" \
      title=tool
USER 1983:1983
WORKDIR /home
WORKDIR u
ENTRYPOINT echo $HOME
CMD ["-x"]
`)
	if err != nil {
		t.Fatal(err)
	}
	want := ImageConfig{
		User:       "1983:1983",
		Env:        []string{"PATH=/bin", "HOME=/home/u", "LANG=C.UTF-8"},
		Entrypoint: []string{"/bin/sh", "-c", "echo /home/u"},
		Cmd:        []string{"-x"},
		WorkingDir: "/home/u",
		Labels:     map[string]string{"org.opencontainers.image.version": "1.2.3", "title": "tool"},
	}
	if !reflect.DeepEqual(spec.Config, want) {
		t.Errorf("config\n got %+v\nwant %+v", spec.Config, want)
	}
	plain, err := ParseSpec(t, "FROM scratch\nCMD [\"/bin/sh\"]\n")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(plain.Config.Env, []string{defaultPath}) {
		t.Errorf("an image that sets no PATH gets BuildKit's default, got %v", plain.Config.Env)
	}
}

// Docker's rules: a directory copies its contents, a file goes to the named path or into a
// directory ending in "/", parents are made root-owned 0755, symlinks stay symlinks, and
// --chown/--chmod apply to what the COPY writes.
func TestCopyFollowsDockersRules(t *testing.T) {
	out := t.TempDir()
	mustWrite(t, filepath.Join(out, "rootfs/bin/busybox"), "#!/bin/true\n", 0o755)
	must(t, os.Symlink("busybox", filepath.Join(out, "rootfs/bin/sh")))
	must(t, os.MkdirAll(filepath.Join(out, "rootfs/tmp"), 0o755))
	must(t, os.Chmod(filepath.Join(out, "rootfs/tmp"), os.ModeSticky|0o777))
	must(t, os.MkdirAll(filepath.Join(out, "home"), 0o755))
	mustWrite(t, filepath.Join(out, "tool"), "tool", 0o700)
	context := t.TempDir()
	mustWrite(t, filepath.Join(context, "etc/passwd"), "root:x:0:0::/:/bin/sh\n", 0o600)

	spec, err := ParseSpec(t, `FROM golang AS s
FROM scratch
COPY --from=s /out/rootfs/ /
COPY --from=s --chown=1983:1983 /out/home/ /home/spacelift/
COPY --chmod=0644 etc/passwd /etc/
COPY --from=s /out/tool /usr/local/bin/renamed
`)
	if err != nil {
		t.Fatal(err)
	}
	tree := Tree{}
	for _, c := range spec.Copies {
		must(t, tree.Apply(c, Sources{Context: context, Stages: map[string]string{"s": out}}))
	}
	type got struct {
		Type     byte
		Mode     os.FileMode
		UID, GID int
		Link     string
	}
	want := map[string]got{
		"bin":                   {tar.TypeDir, 0o755, 0, 0, ""},
		"bin/busybox":           {tar.TypeReg, 0o755, 0, 0, ""},
		"bin/sh":                {tar.TypeSymlink, 0o777, 0, 0, "busybox"},
		"tmp":                   {tar.TypeDir, 0o777 | os.ModeSticky, 0, 0, ""},
		"home":                  {tar.TypeDir, 0o755, 0, 0, ""},
		"home/spacelift":        {tar.TypeDir, 0o755, 1983, 1983, ""},
		"etc":                   {tar.TypeDir, 0o755, 0, 0, ""},
		"etc/passwd":            {tar.TypeReg, 0o644, 0, 0, ""},
		"usr":                   {tar.TypeDir, 0o755, 0, 0, ""},
		"usr/local":             {tar.TypeDir, 0o755, 0, 0, ""},
		"usr/local/bin":         {tar.TypeDir, 0o755, 0, 0, ""},
		"usr/local/bin/renamed": {tar.TypeReg, 0o700, 0, 0, ""},
	}
	if len(tree) != len(want) {
		t.Errorf("paths: got %v", tree.Paths())
	}
	for p, w := range want {
		e, ok := tree[p]
		if !ok {
			t.Errorf("/%s is missing", p)
			continue
		}
		if g := (got{e.Type, e.Mode, e.UID, e.GID, e.Link}); g != w {
			t.Errorf("/%s: got %+v, want %+v", p, g, w)
		}
	}
}

func TestTheSameInputsGiveTheSameArchive(t *testing.T) {
	out := t.TempDir()
	mustWrite(t, filepath.Join(out, "tool"), "tool", 0o755)
	spec, err := ParseSpec(t, "FROM golang AS s\nFROM scratch\nCOPY --from=s /out/tool /tool\nENTRYPOINT [\"/tool\"]\n")
	must(t, err)
	tree := Tree{}
	must(t, tree.Apply(spec.Copies[0], Sources{Stages: map[string]string{"s": out}}))
	dir := t.TempDir()
	a, err := WriteArchive(tree, spec.Config, "localhost/x/tool:1", "test", filepath.Join(dir, "a.tar"))
	must(t, err)
	later := time.Now().Add(time.Hour)
	must(t, os.Chtimes(filepath.Join(out, "tool"), later, later)) // a newer mtime must not matter
	b, err := WriteArchive(tree, spec.Config, "localhost/x/tool:1", "test", filepath.Join(dir, "b.tar"))
	must(t, err)
	if a.ManifestDigest != b.ManifestDigest {
		t.Errorf("digests differ: %s %s", a.ManifestDigest, b.ManifestDigest)
	}
	ab, _ := os.ReadFile(filepath.Join(dir, "a.tar"))
	bb, _ := os.ReadFile(filepath.Join(dir, "b.tar"))
	if !bytes.Equal(ab, bb) {
		t.Error("the two archives differ")
	}

	index := readMember(t, ab, "index.json")
	var idx struct {
		Manifests []descriptor `json:"manifests"`
	}
	must(t, json.Unmarshal(index, &idx))
	if len(idx.Manifests) != 1 || idx.Manifests[0].Annotations["io.containerd.image.name"] != "localhost/x/tool:1" ||
		idx.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "1" {
		t.Errorf("index.json names the image wrongly: %s", index)
	}
}

func TestADynamicallyLinkedProgramIsRefused(t *testing.T) {
	var dynamic string
	for _, p := range []string{"/bin/sh", "/bin/ls", "/usr/bin/env"} {
		if f, err := elf.Open(p); err == nil {
			for _, prog := range f.Progs {
				if prog.Type == elf.PT_INTERP {
					dynamic = p
				}
			}
			f.Close()
		}
		if dynamic != "" {
			break
		}
	}
	if dynamic == "" {
		t.Skip("no dynamically linked program on this machine to try")
	}
	out := t.TempDir()
	data, err := os.ReadFile(dynamic)
	must(t, err)
	mustWrite(t, filepath.Join(out, "prog"), string(data), 0o755)
	spec, err := ParseSpec(t, "FROM golang AS s\nFROM scratch\nCOPY --from=s /out/prog /prog\n")
	must(t, err)
	err = Tree{}.Apply(spec.Copies[0], Sources{Stages: map[string]string{"s": out}})
	wantError(t, err, "is dynamically linked (interpreter /lib", "a FROM scratch image has no libc; build it static")
}

// --- helpers ---

// ParseSpec parses Dockerfile text and reads its final stage.
func ParseSpec(t *testing.T, text string) (*ImageSpec, error) {
	t.Helper()
	d, err := ParseDockerfile("Dockerfile", text)
	if err != nil {
		return nil, err
	}
	return d.Spec()
}

// check runs Check on Dockerfile text with stage scripts that declare the given outputs and
// write nothing.
func check(t *testing.T, outputs map[string]string, text string) error {
	t.Helper()
	d, err := ParseDockerfile("Dockerfile", text)
	if err != nil {
		return err
	}
	spec, err := d.Spec()
	if err != nil {
		return err
	}
	return Check(d, spec, writeScripts(t, t.TempDir(), outputs), t.TempDir())
}

func writeScripts(t *testing.T, dir string, outputs map[string]string) StageScripts {
	t.Helper()
	stages := filepath.Join(dir, "stages")
	must(t, os.MkdirAll(stages, 0o755))
	for name, out := range outputs {
		script := "#!/bin/sh\nif [ \"$1\" = --outputs ]; then printf '%s\\n' '" + out + "'; fi\n"
		mustWrite(t, filepath.Join(stages, name), script, 0o755)
	}
	return StageScripts{Dir: stages}
}

func wantError(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error; want one containing %q", parts)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func readMember(t *testing.T, archive []byte, name string) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		hdr, err := tr.Next()
		if err != nil {
			t.Fatalf("%s not in the archive: %v", name, err)
		}
		if hdr.Name == name {
			data, err := io.ReadAll(tr)
			must(t, err)
			return data
		}
	}
}

func mustWrite(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(p), 0o755))
	must(t, os.WriteFile(p, []byte(content), mode))
	must(t, os.Chmod(p, mode))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
