package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Dockerfile is what the image builder reads from a Dockerfile: the names of its stages, its
// global ARG defaults, and every instruction of its final stage, which must be `FROM scratch`.
type Dockerfile struct {
	Path string
	// GlobalArgs are the `ARG NAME=default` lines before the first FROM.
	GlobalArgs map[string]string
	// Stages are the names (`AS name`) of the stages before the final one.
	Stages map[string]int // name -> line of its FROM
	Final  []Instruction
}

// Instruction is one instruction of the final stage, continuation lines joined.
type Instruction struct {
	Line int
	Cmd  string // upper case: COPY, ENV, ...
	Args string // the rest of the line, trimmed
}

// DockerfileError names the file and line a problem is on.
type DockerfileError struct {
	Path string
	Line int
	Msg  string
}

func (e *DockerfileError) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.Path, e.Msg)
	}
	return fmt.Sprintf("%s:%d: %s", e.Path, e.Line, e.Msg)
}

// ReadDockerfile parses the file at p.
func ReadDockerfile(p string) (*Dockerfile, error) {
	text, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	return ParseDockerfile(p, string(text))
}

// ParseDockerfile parses Dockerfile text (p is only used in errors).
func ParseDockerfile(p, text string) (*Dockerfile, error) {
	d := &Dockerfile{Path: p, GlobalArgs: map[string]string{}, Stages: map[string]int{}}
	bad := func(line int, format string, a ...any) error {
		return &DockerfileError{Path: p, Line: line, Msg: fmt.Sprintf(format, a...)}
	}
	var instructions []Instruction
	var cur strings.Builder
	start := 0
	for i, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		if cur.Len() == 0 {
			start = i + 1
		}
		// Comments (and parser directives such as `# syntax=`) are whole lines only.
		if strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\"))
			cur.WriteString(" ")
			continue
		}
		cur.WriteString(line)
		joined := strings.TrimSpace(cur.String())
		cur.Reset()
		if joined == "" {
			continue
		}
		cmd, args, _ := strings.Cut(joined, " ")
		instructions = append(instructions, Instruction{Line: start, Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args)})
	}
	if cur.Len() > 0 {
		return nil, bad(start, "the file ends inside a line continuation")
	}

	froms := 0
	for _, in := range instructions {
		if in.Cmd == "FROM" {
			froms++
		}
	}
	if froms == 0 {
		return nil, bad(0, "no FROM instruction")
	}
	seen := 0
	for _, in := range instructions {
		switch {
		case in.Cmd == "FROM":
			seen++
			fields := strings.Fields(in.Args)
			var image, name string
			for _, f := range fields {
				if strings.HasPrefix(f, "--") {
					continue // --platform=...
				}
				if image == "" {
					image = f
				}
			}
			if len(fields) >= 3 && strings.EqualFold(fields[len(fields)-2], "AS") {
				name = strings.ToLower(fields[len(fields)-1])
			}
			if seen < froms {
				if name == "" {
					return nil, bad(in.Line, "stage %q has no name: the final stage can only copy from named stages (FROM %s AS <name>)", image, image)
				}
				d.Stages[name] = in.Line
			} else if image != "scratch" {
				return nil, bad(in.Line, "the final stage is FROM %s: the OCI builder needs FROM scratch (it has no base images)", image)
			}
		case seen == 0:
			if in.Cmd != "ARG" {
				return nil, bad(in.Line, "%s before the first FROM (only ARG may come first)", in.Cmd)
			}
			name, value, _ := strings.Cut(in.Args, "=")
			d.GlobalArgs[strings.TrimSpace(name)] = unquote(strings.TrimSpace(value))
		case seen == froms:
			d.Final = append(d.Final, in)
		}
	}
	return d, nil
}

// ImageSpec is the final stage, read: what to copy and the image configuration.
type ImageSpec struct {
	Copies []Copy
	Config ImageConfig
}

// Copy is one COPY of the final stage.
type Copy struct {
	Line    int
	From    string   // stage name, "" for the build context
	Sources []string // absolute paths in the stage, or paths relative to the context
	Dest    string
	Chown   *[2]int // uid, gid
	Chmod   *os.FileMode
}

// ImageConfig is the part of the OCI image config a Dockerfile sets.
type ImageConfig struct {
	User       string            `json:"User,omitempty"`
	Env        []string          `json:"Env,omitempty"`
	Entrypoint []string          `json:"Entrypoint,omitempty"`
	Cmd        []string          `json:"Cmd,omitempty"`
	WorkingDir string            `json:"WorkingDir,omitempty"`
	Labels     map[string]string `json:"Labels,omitempty"`
}

// BuildKit gives every image this PATH unless the Dockerfile sets one; so does the builder,
// so that an image built either way has the same configuration.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Spec reads the final stage's instructions. Unsupported instructions are errors, never
// skipped: an image built here must be the image an engine builds from the same file.
func (d *Dockerfile) Spec() (*ImageSpec, error) {
	spec := &ImageSpec{Config: ImageConfig{Env: []string{defaultPath}}}
	vars := map[string]string{} // ARGs and ENVs in scope, for $VAR substitution
	bad := func(line int, format string, a ...any) error {
		return &DockerfileError{Path: d.Path, Line: line, Msg: fmt.Sprintf(format, a...)}
	}
	for _, in := range d.Final {
		args := in.Args
		if in.Cmd != "ARG" {
			args = expand(args, vars)
		}
		switch in.Cmd {
		case "ARG":
			name, value, hasDefault := strings.Cut(args, "=")
			name = strings.TrimSpace(name)
			if hasDefault {
				vars[name] = unquote(strings.TrimSpace(value))
			} else if v, ok := d.GlobalArgs[name]; ok {
				vars[name] = v
			} else {
				return nil, bad(in.Line, "ARG %s has no default here or before the first FROM", name)
			}
		case "COPY":
			c, err := parseCopy(in.Line, args)
			if err != nil {
				return nil, &DockerfileError{Path: d.Path, Line: in.Line, Msg: err.Error()}
			}
			if c.From != "" {
				if _, ok := d.Stages[c.From]; !ok {
					return nil, bad(in.Line, "COPY --from=%s: no stage of that name in this Dockerfile (the OCI builder copies only from stages, never from images)", c.From)
				}
			}
			spec.Copies = append(spec.Copies, c)
		case "ENV":
			pairs, err := keyValues(args)
			if err != nil {
				return nil, bad(in.Line, "ENV: %v", err)
			}
			for _, kv := range pairs {
				vars[kv[0]] = kv[1]
				spec.Config.Env = setEnv(spec.Config.Env, kv[0], kv[1])
			}
		case "LABEL":
			pairs, err := keyValues(args)
			if err != nil {
				return nil, bad(in.Line, "LABEL: %v", err)
			}
			if spec.Config.Labels == nil {
				spec.Config.Labels = map[string]string{}
			}
			for _, kv := range pairs {
				spec.Config.Labels[kv[0]] = kv[1]
			}
		case "USER":
			spec.Config.User = args
		case "WORKDIR":
			if !path.IsAbs(args) {
				args = path.Join("/", spec.Config.WorkingDir, args)
			}
			spec.Config.WorkingDir = path.Clean(args)
		case "ENTRYPOINT", "CMD":
			argv, err := commandForm(args)
			if err != nil {
				return nil, bad(in.Line, "%s: %v", in.Cmd, err)
			}
			if in.Cmd == "ENTRYPOINT" {
				spec.Config.Entrypoint = argv
				spec.Config.Cmd = nil // as Docker does: ENTRYPOINT resets an inherited CMD
			} else {
				spec.Config.Cmd = argv
			}
		case "RUN":
			return nil, bad(in.Line, "RUN in the final stage: a scratch image has nothing to run it with; do it in a builder stage and COPY the result")
		default:
			return nil, bad(in.Line, "%s is not supported in the final stage (supported: ARG COPY ENV LABEL USER WORKDIR ENTRYPOINT CMD)", in.Cmd)
		}
	}
	return spec, nil
}

// StageNames are the stages the final stage copies from, sorted.
func (s *ImageSpec) StageNames() []string {
	set := map[string]bool{}
	for _, c := range s.Copies {
		if c.From != "" {
			set[c.From] = true
		}
	}
	names := make([]string, 0, len(set))
	for n := range set {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func parseCopy(line int, args string) (Copy, error) {
	c := Copy{Line: line}
	rest := strings.TrimSpace(args)
	for strings.HasPrefix(rest, "--") {
		flag, after, _ := strings.Cut(rest, " ")
		rest = strings.TrimSpace(after)
		key, value, _ := strings.Cut(strings.TrimPrefix(flag, "--"), "=")
		switch key {
		case "from":
			c.From = strings.ToLower(value)
		case "chown":
			m := regexp.MustCompile(`^(\d+):(\d+)$`).FindStringSubmatch(value)
			if m == nil {
				return c, fmt.Errorf("COPY --chown=%s: give a numeric uid:gid (a scratch image has no /etc/passwd to look names up in)", value)
			}
			uid, _ := strconv.Atoi(m[1])
			gid, _ := strconv.Atoi(m[2])
			c.Chown = &[2]int{uid, gid}
		case "chmod":
			bits, err := strconv.ParseUint(value, 8, 32)
			if err != nil || bits > 0o7777 {
				return c, fmt.Errorf("COPY --chmod=%s: give an octal mode such as 0755", value)
			}
			m := fileMode(uint32(bits))
			c.Chmod = &m
		default:
			return c, fmt.Errorf("COPY --%s is not supported (supported: --from, --chown, --chmod)", key)
		}
	}
	var words []string
	if strings.HasPrefix(rest, "[") {
		if err := json.Unmarshal([]byte(rest), &words); err != nil {
			return c, fmt.Errorf("COPY: the JSON form does not parse: %v", err)
		}
	} else {
		var err error
		if words, err = splitWords(rest); err != nil {
			return c, err
		}
	}
	if len(words) < 2 {
		return c, fmt.Errorf("COPY needs at least one source and a destination")
	}
	c.Sources, c.Dest = words[:len(words)-1], words[len(words)-1]
	for _, s := range c.Sources {
		if strings.ContainsAny(s, "*?[") {
			return c, fmt.Errorf("COPY %s: wildcards are not supported; name each file", s)
		}
	}
	if len(c.Sources) > 1 && !strings.HasSuffix(c.Dest, "/") {
		return c, fmt.Errorf("COPY with several sources needs a destination directory ending in /")
	}
	return c, nil
}

// fileMode turns permission bits (with setuid, setgid, sticky) into an os.FileMode.
func fileMode(bits uint32) os.FileMode {
	m := os.FileMode(bits & 0o777)
	if bits&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if bits&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if bits&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

// commandForm reads ENTRYPOINT/CMD: the JSON (exec) form as is, the shell form wrapped in
// /bin/sh -c as Docker does.
func commandForm(args string) ([]string, error) {
	if strings.HasPrefix(args, "[") {
		var argv []string
		if err := json.Unmarshal([]byte(args), &argv); err != nil {
			return nil, fmt.Errorf("the JSON form does not parse: %v", err)
		}
		return argv, nil
	}
	return []string{"/bin/sh", "-c", args}, nil
}

// keyValues reads `K=V K2="V 2"` (and the legacy single `K V` form).
func keyValues(args string) ([][2]string, error) {
	words, err := splitWords(args)
	if err != nil {
		return nil, err
	}
	if len(words) >= 2 && !strings.Contains(words[0], "=") {
		key, value, _ := strings.Cut(args, " ")
		return [][2]string{{key, unquote(strings.TrimSpace(value))}}, nil
	}
	var out [][2]string
	for _, w := range words {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q is not KEY=VALUE", w)
		}
		out = append(out, [2]string{k, v})
	}
	return out, nil
}

// splitWords splits on spaces outside double quotes and drops the quotes.
func splitWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '\\' && i+1 < len(s) && inQuote:
			i++
			cur.WriteByte(s[i])
		case ch == '"':
			inQuote = !inQuote
			inWord = true
		case (ch == ' ' || ch == '\t') && !inQuote:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}

var varRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// expand substitutes $VAR and ${VAR} with the ARGs and ENVs in scope (unknown ones become "",
// as in Docker).
func expand(s string, vars map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		name := strings.Trim(m, "${}")
		return vars[name]
	})
}

func setEnv(env []string, key, value string) []string {
	for i, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			env[i] = key + "=" + value
			return env
		}
	}
	return append(env, key+"="+value)
}
