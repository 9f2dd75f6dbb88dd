package main

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// The media types of an OCI image with one uncompressed layer.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// Every header gets this time, so that the same inputs give the same digests.
var epoch = time.Unix(0, 0).UTC()

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type imageConfig struct {
	Architecture string      `json:"architecture"`
	OS           string      `json:"os"`
	Config       ImageConfig `json:"config"`
	RootFS       struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
	History []map[string]string `json:"history"`
}

// Built says what was written.
type Built struct {
	Ref            string
	ManifestDigest string
	LayerSize      int64
}

// WriteArchive writes the tree as an OCI image layout in a tar file at out (the form
// `ctr images import` and `docker load` read), named ref. createdBy goes into the history.
func WriteArchive(t Tree, cfg ImageConfig, ref, createdBy, out string) (*Built, error) {
	tmpDir, err := os.MkdirTemp(filepath.Dir(out), ".ocibuild-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmpDir)

	layerPath := filepath.Join(tmpDir, "layer.tar")
	layerDigest, layerSize, err := writeLayer(t, layerPath)
	if err != nil {
		return nil, fmt.Errorf("writing the layer: %w", err)
	}

	var config imageConfig
	config.Architecture, config.OS, config.Config = runtime.GOARCH, "linux", cfg
	config.RootFS.Type, config.RootFS.DiffIDs = "layers", []string{layerDigest}
	config.History = []map[string]string{{"created_by": createdBy}}
	configJSON, err := json.Marshal(config)
	if err != nil {
		return nil, err
	}
	configDesc := blobDescriptor(mediaConfig, configJSON)

	manifest := map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        configDesc,
		"layers":        []descriptor{{MediaType: mediaLayer, Digest: layerDigest, Size: layerSize}},
	}
	manifestJSON, err := json.Marshal(manifest)
	if err != nil {
		return nil, err
	}
	manifestDesc := blobDescriptor(mediaManifest, manifestJSON)
	manifestDesc.Platform = &platform{Architecture: runtime.GOARCH, OS: "linux"}
	manifestDesc.Annotations = map[string]string{
		"io.containerd.image.name":          ref, // the name `ctr images import` gives it
		"org.opencontainers.image.ref.name": tagOf(ref),
	}
	indexJSON, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaIndex,
		"manifests":     []descriptor{manifestDesc},
	})
	if err != nil {
		return nil, err
	}

	tmpOut := filepath.Join(tmpDir, "image.tar")
	f, err := os.Create(tmpOut)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(f)
	err = addBytes(tw, "oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	if err == nil {
		err = addBytes(tw, "index.json", indexJSON)
	}
	if err == nil {
		err = addFile(tw, blobPath(layerDigest), layerPath, layerSize)
	}
	if err == nil {
		err = addBytes(tw, blobPath(configDesc.Digest), configJSON)
	}
	if err == nil {
		err = addBytes(tw, blobPath(manifestDesc.Digest), manifestJSON)
	}
	if err == nil {
		err = tw.Close()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("writing %s: %w", out, err)
	}
	if err := os.Rename(tmpOut, out); err != nil {
		return nil, err
	}
	return &Built{Ref: ref, ManifestDigest: manifestDesc.Digest, LayerSize: layerSize}, nil
}

// writeLayer writes the tree as one tar layer and returns its digest and size.
func writeLayer(t Tree, dest string) (string, int64, error) {
	f, err := os.Create(dest)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	counter := &countingWriter{w: io.MultiWriter(f, h)}
	tw := tar.NewWriter(counter)
	for _, p := range t.Paths() {
		if err := writeEntry(tw, p, t[p]); err != nil {
			return "", 0, fmt.Errorf("/%s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return "", 0, err
	}
	return digestOf(h), counter.n, f.Close()
}

func writeEntry(tw *tar.Writer, p string, e *Entry) error {
	hdr := &tar.Header{
		Typeflag: e.Type,
		Name:     p,
		Mode:     tarMode(e.Mode),
		Uid:      e.UID,
		Gid:      e.GID,
		ModTime:  epoch,
		Format:   tar.FormatPAX,
	}
	switch e.Type {
	case tar.TypeDir:
		hdr.Name += "/"
		return tw.WriteHeader(hdr)
	case tar.TypeSymlink:
		hdr.Linkname = e.Link
		return tw.WriteHeader(hdr)
	}
	src, err := os.Open(e.Source)
	if err != nil {
		return err
	}
	defer src.Close()
	info, err := src.Stat()
	if err != nil {
		return err
	}
	hdr.Size = info.Size()
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	n, err := io.Copy(tw, src)
	if err == nil && n != hdr.Size {
		err = fmt.Errorf("%s changed size while being copied", e.Source)
	}
	return err
}

// tarMode converts permission and special bits to the tar header's mode field.
func tarMode(m os.FileMode) int64 {
	mode := int64(m.Perm())
	if m&os.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}

func addBytes(tw *tar.Writer, name string, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: epoch}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

func addFile(tw *tar.Writer, name, src string, size int64) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: size, ModTime: epoch}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

func blobDescriptor(mediaType string, data []byte) descriptor {
	h := sha256.New()
	h.Write(data)
	return descriptor{MediaType: mediaType, Digest: digestOf(h), Size: int64(len(data))}
}

func blobPath(digest string) string {
	return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:")
}

func digestOf(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

// tagOf is the tag of a reference ("latest" when it has none).
func tagOf(ref string) string {
	last := ref[strings.LastIndex(ref, "/")+1:]
	if _, tag, ok := strings.Cut(last, ":"); ok {
		return tag
	}
	return "latest"
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
