package sdk

// Object is a Kubernetes object as generic JSON. Unknown fields survive a round trip.
type Object map[string]any

// Map returns the object at key, creating it when create is true.
func (o Object) Map(key string, create bool) Object {
	if m, ok := o[key].(map[string]any); ok {
		return Object(m)
	}
	if m, ok := o[key].(Object); ok {
		return m
	}
	if !create {
		return nil
	}
	m := map[string]any{}
	o[key] = m
	return Object(m)
}

// String returns the string at key, or "".
func (o Object) String(key string) string {
	s, _ := o[key].(string)
	return s
}

// Labels returns metadata.labels (nil when there are none).
func (o Object) Labels() map[string]string { return o.stringMap("labels") }

// Annotations returns metadata.annotations (nil when there are none).
func (o Object) Annotations() map[string]string { return o.stringMap("annotations") }

func (o Object) stringMap(field string) map[string]string {
	meta := o.Map("metadata", false)
	if meta == nil {
		return nil
	}
	raw := meta.Map(field, false)
	if raw == nil {
		return nil
	}
	out := make(map[string]string, len(raw))
	for k, v := range raw {
		if s, ok := v.(string); ok {
			out[k] = s
		}
	}
	return out
}

// SetLabel sets metadata.labels[key].
func (o Object) SetLabel(key, value string) {
	o.Map("metadata", true).Map("labels", true)[key] = value
}

// SetAnnotation sets metadata.annotations[key].
func (o Object) SetAnnotation(key, value string) {
	o.Map("metadata", true).Map("annotations", true)[key] = value
}

// Container is one entry of spec.containers or spec.initContainers.
type Container struct {
	Object
	// Init is true for spec.initContainers.
	Init bool
}

// Name is the container's name.
func (c Container) Name() string { return c.String("name") }

// Image is the container's image.
func (c Container) Image() string { return c.String("image") }

// SetImage changes the container's image in the Pod.
func (c Container) SetImage(image string) { c.Object["image"] = image }

// Containers lists the Pod's init containers, then its containers.
func (o Object) Containers() []Container {
	spec := o.Map("spec", false)
	if spec == nil {
		return nil
	}
	var out []Container
	for _, field := range []string{"initContainers", "containers"} {
		list, _ := spec[field].([]any)
		for _, item := range list {
			if m, ok := item.(map[string]any); ok {
				out = append(out, Container{Object: Object(m), Init: field == "initContainers"})
			}
		}
	}
	return out
}
