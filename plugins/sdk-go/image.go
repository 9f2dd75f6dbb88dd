package sdk

import "strings"

// Image is a parsed image reference, read with Docker's rules (the operator's rules for
// allowedRunnerImageHosts): the first path component is a host only if it has a '.' or a ':'
// or is "localhost"; otherwise the image is on docker.io, under library/ when it has no path.
type Image struct {
	Host       string
	Repository string
	Tag        string
	Digest     string
}

// ParseImage parses an image reference. It does not validate it.
func ParseImage(ref string) Image {
	var img Image
	name := ref
	if at := strings.IndexByte(name, '@'); at >= 0 {
		img.Digest = name[at+1:]
		name = name[:at]
	}
	slash := strings.LastIndexByte(name, '/') + 1
	if colon := strings.LastIndexByte(name[slash:], ':'); colon >= 0 {
		img.Tag = name[slash+colon+1:]
		name = name[:slash+colon]
	}
	first, rest, found := strings.Cut(name, "/")
	if found && (strings.ContainsAny(first, ".:") || first == "localhost") {
		img.Host = strings.ToLower(first)
		img.Repository = rest
	} else {
		img.Host = "docker.io"
		img.Repository = name
	}
	if img.Host == "index.docker.io" || img.Host == "registry-1.docker.io" {
		img.Host = "docker.io"
	}
	if img.Host == "docker.io" && !strings.Contains(img.Repository, "/") {
		img.Repository = "library/" + img.Repository
	}
	return img
}
