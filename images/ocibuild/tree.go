package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Tree is the image's root filesystem as the COPY instructions build it, before it is written
// as a layer. Keys are clean paths without the leading "/" ("usr/bin/tofu").
type Tree map[string]*Entry

// Entry is one file, directory or symlink of the image.
type Entry struct {
	Type     byte // tar.TypeDir, tar.TypeReg, tar.TypeSymlink
	Mode     os.FileMode
	UID, GID int
	Source   string // host path of a regular file
	Link     string // symlink target
}

// Sources says where the files a COPY names are on this machine: the build context, and the
// local build of each stage (its /out directory).
type Sources struct {
	Context string
	Stages  map[string]string // stage name -> the directory its local build wrote /out into
}

// StageOut is the one directory of a builder stage that the final stage may copy from: the
// local build of a stage produces exactly that directory (images/README.md).
const StageOut = "/out"

// hostPath maps a COPY source to a path on this machine.
func (s Sources) hostPath(c Copy, src string) (string, error) {
	if c.From == "" {
		clean := path.Clean("/" + src)
		return filepath.Join(s.Context, filepath.FromSlash(clean)), nil
	}
	rel, ok := underOut(src)
	if !ok {
		return "", fmt.Errorf("COPY --from=%s %s: a stage's local build provides only its %s directory; copy from under it", c.From, src, StageOut)
	}
	dir, ok := s.Stages[c.From]
	if !ok {
		return "", fmt.Errorf("COPY --from=%s: stage %s was not built", c.From, c.From)
	}
	return filepath.Join(dir, filepath.FromSlash(rel)), nil
}

// underOut says whether p is /out or below it, and gives the part below it.
func underOut(p string) (string, bool) {
	clean := path.Clean(p)
	if clean == StageOut {
		return "", true
	}
	rel, ok := strings.CutPrefix(clean, StageOut+"/")
	return rel, ok
}

// Apply performs one COPY with Docker's rules: a directory source copies its contents into
// the destination, a file goes to the destination path, or into it when the destination ends
// in "/" or there are several sources.
func (t Tree) Apply(c Copy, s Sources) error {
	for _, src := range c.Sources {
		host, err := s.hostPath(c, src)
		if err != nil {
			return err
		}
		info, err := os.Stat(host) // a top-level symlink is followed, as Docker does
		if err != nil {
			return fmt.Errorf("COPY %s: %w", src, err)
		}
		dest := strings.TrimPrefix(path.Clean("/"+c.Dest), "/")
		if info.IsDir() {
			if err := t.copyDir(host, dest, info, c); err != nil {
				return fmt.Errorf("COPY %s: %w", src, err)
			}
			continue
		}
		if strings.HasSuffix(c.Dest, "/") || len(c.Sources) > 1 {
			dest = path.Join(dest, filepath.Base(host))
		}
		if err := t.put(dest, host, info, c); err != nil {
			return fmt.Errorf("COPY %s: %w", src, err)
		}
	}
	return nil
}

func (t Tree) copyDir(hostDir, dest string, info os.FileInfo, c Copy) error {
	if dest != "" {
		if err := t.put(dest, hostDir, info, c); err != nil {
			return err
		}
	}
	names, err := readDirSorted(hostDir)
	if err != nil {
		return err
	}
	for _, name := range names {
		host := filepath.Join(hostDir, name)
		fi, err := os.Lstat(host)
		if err != nil {
			return err
		}
		target := path.Join(dest, name)
		if fi.IsDir() {
			if err := t.copyDir(host, target, fi, c); err != nil {
				return err
			}
			continue
		}
		if err := t.put(target, host, fi, c); err != nil {
			return err
		}
	}
	return nil
}

// put adds one entry (and its missing parents, root-owned 0755 as an engine makes them).
func (t Tree) put(dest, host string, info os.FileInfo, c Copy) error {
	if err := t.parents(dest); err != nil {
		return err
	}
	e := &Entry{Mode: info.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)}
	switch {
	case info.Mode()&os.ModeSymlink != 0:
		link, err := os.Readlink(host)
		if err != nil {
			return err
		}
		e.Type, e.Link, e.Mode = tar.TypeSymlink, link, 0o777
	case info.IsDir():
		e.Type = tar.TypeDir
	case info.Mode().IsRegular():
		if err := refuseDynamicELF(host); err != nil {
			return err
		}
		e.Type, e.Source = tar.TypeReg, host
	default:
		return fmt.Errorf("%s is neither a file, a directory nor a symlink", host)
	}
	if c.Chmod != nil && e.Type != tar.TypeSymlink {
		e.Mode = *c.Chmod
	}
	if c.Chown != nil {
		e.UID, e.GID = c.Chown[0], c.Chown[1]
	}
	if old, ok := t[dest]; ok && old.Type == tar.TypeDir && e.Type != tar.TypeDir {
		return fmt.Errorf("/%s is a directory in the image; it cannot become a file", dest)
	}
	t[dest] = e
	return nil
}

func (t Tree) parents(dest string) error {
	for dir := path.Dir(dest); dir != "." && dir != "/"; dir = path.Dir(dir) {
		if e, ok := t[dir]; ok {
			if e.Type != tar.TypeDir {
				return fmt.Errorf("/%s is not a directory in the image, so /%s cannot be put under it", dir, dest)
			}
			continue
		}
		t[dir] = &Entry{Type: tar.TypeDir, Mode: 0o755}
	}
	return nil
}

// refuseDynamicELF: a scratch image has no libc and no dynamic loader, so a dynamically linked
// program in it fails with a baffling "no such file or directory" at exec. Refuse it here.
func refuseDynamicELF(host string) error {
	f, err := os.Open(host)
	if err != nil {
		return err
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := io.ReadFull(f, magic); err != nil || !bytes.Equal(magic, []byte("\x7fELF")) {
		return nil // not an ELF file
	}
	ef, err := elf.NewFile(f)
	if err != nil {
		return fmt.Errorf("%s looks like an ELF file but does not parse: %w", host, err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			interp, _ := io.ReadAll(p.Open())
			return fmt.Errorf("%s is dynamically linked (interpreter %s): a FROM scratch image has no libc; build it static",
				host, strings.TrimRight(string(interp), "\x00"))
		}
	}
	return nil
}

func readDirSorted(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	sort.Strings(names)
	return names, nil
}

// Paths are the tree's paths in the order they are written: sorted, so a parent comes before
// its children and the same tree always gives the same bytes.
func (t Tree) Paths() []string {
	paths := make([]string, 0, len(t))
	for p := range t {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	return paths
}
