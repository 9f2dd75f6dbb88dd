{{/* The chart name, or nameOverride. */}}
{{- define "workerpool-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else "<release>-<name>", or just the release
name when it already contains the chart name. Cut to 45 characters so that the longest suffix
("-metrics-auth-rolebinding") still fits 63.
*/}}
{{- define "workerpool-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 45 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 45 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "workerpool-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "workerpool-operator.labels" -}}
helm.sh/chart: {{ include "workerpool-operator.chart" . }}
{{ include "workerpool-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: workerpool-operator
{{- end }}

{{/* Labels that select the operator Pods. */}}
{{- define "workerpool-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "workerpool-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "workerpool-operator.podSelectorLabels" -}}
control-plane: controller-manager
{{ include "workerpool-operator.selectorLabels" . }}
{{- end }}

{{- define "workerpool-operator.serviceAccountName" -}}
{{- $sa := .Values.controllerManager.serviceAccount }}
{{- if $sa.create }}
{{- default (printf "%s-controller-manager" (include "workerpool-operator.fullname" .)) $sa.name }}
{{- else }}
{{- required "controllerManager.serviceAccount.name: name the existing ServiceAccount to run as (serviceAccount.create is false)" $sa.name }}
{{- end }}
{{- end }}

{{/* The Lease the replicas elect their leader with (unique per release). */}}
{{- define "workerpool-operator.leaderElectionId" -}}
{{- printf "%s-leader" (include "workerpool-operator.fullname" .) }}
{{- end }}

{{- define "workerpool-operator.image" -}}
{{- $image := .Values.controllerManager.manager.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* Whether the metrics endpoint needs TokenReview/SubjectAccessReview rights. */}}
{{- define "workerpool-operator.metricsSecure" -}}
{{- if and .Values.metricsService.enabled .Values.metricsService.secure }}true{{ end }}
{{- end }}

{{/* Where the hook configuration is mounted. */}}
{{- define "workerpool-operator.hookConfigDir" -}}/etc/workerpool-operator{{- end }}
{{- define "workerpool-operator.pluginCacheDir" -}}/var/cache/workerpool-operator{{- end }}

{{/*
The size, in MiB, the operator keeps its compiled-plugin cache to (--plugin-cache-max-mib): 3/4
of the cache volume's sizeLimit (Mi or Gi). The rest covers what the operator's soft limit does
not count (wasmtime's .stats files, block rounding, the module written just before a cleanup).
*/}}
{{- define "workerpool-operator.pluginCacheMaxMib" -}}
{{- $limit := toString .Values.controllerManager.pluginCache.sizeLimit }}
{{- $mib := trimSuffix "Mi" $limit | atoi }}
{{- if hasSuffix "Gi" $limit }}{{ $mib = mul (trimSuffix "Gi" $limit | atoi) 1024 }}{{ end }}
{{- div (mul $mib 3) 4 }}
{{- end }}
{{- define "workerpool-operator.hookConfigName" -}}
{{- printf "%s-hooks" (include "workerpool-operator.fullname" .) }}
{{- end }}
{{- define "workerpool-operator.policiesConfigMapName" -}}
{{- printf "%s-policies" (include "workerpool-operator.fullname" .) }}
{{- end }}
{{/* The ConfigMap the chart creates for a plugin shipped as a chart file. Argument: (list $ plugin). */}}
{{- define "workerpool-operator.pluginConfigMapName" -}}
{{- $root := index . 0 }}
{{- $plugin := index . 1 }}
{{- printf "%s-plugin-%s" (include "workerpool-operator.fullname" $root) $plugin.name | trunc 253 }}
{{- end }}

{{/*
Checks values that a JSON schema cannot express well, with messages that name the value and
the fix. Included by the Deployment, so it runs for every rendering.
*/}}
{{- define "workerpool-operator.validate" -}}
{{- if .Values.controllerManager.enforceFips140 }}
{{- fail "controllerManager.enforceFips140: this operator is written in Rust, not Go, so Go's FIPS 140-3 mode (GODEBUG=fips140=only) does not exist here; a FIPS build would be a separate build of the operator with aws-lc-rs' FIPS module. Remove the setting (see docs/helm.md, \"FIPS\")." }}
{{- end }}
{{- if and .Values.metricsService.enabled .Values.metricsService.enableHTTP2 }}
{{- fail "metricsService.enableHTTP2: this operator serves metrics over HTTP/1.1 only; remove the setting." }}
{{- end }}
{{- if and .Values.controllerManager.pdb.enabled (hasKey .Values.controllerManager.pdb "minAvailable") (hasKey .Values.controllerManager.pdb "maxUnavailable") }}
{{- fail "controllerManager.pdb: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- if and .Values.pdb.enabled (hasKey .Values.pdb "minAvailable") (hasKey .Values.pdb "maxUnavailable") }}
{{- fail "pdb: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- $cache := .Values.controllerManager.pluginCache }}
{{- if and $cache.enabled (lt (include "workerpool-operator.pluginCacheMaxMib" . | atoi) 3) }}
{{- fail (printf "controllerManager.pluginCache.sizeLimit: %s is too small for compiled plugins (about 1 MB each); give it at least 4Mi, or set controllerManager.pluginCache.enabled=false" $cache.sizeLimit) }}
{{- end }}
{{- $limits := .Values.hooks.limits }}
{{- range $setting := list (list "pluginTimeoutMillis" 100 "maxPluginTimeoutMillis" 1000) (list "pluginMemoryLimitMib" 64 "maxPluginMemoryLimitMib" 64) }}
{{- $default := index $limits (index $setting 0) | default (index $setting 1) | int }}
{{- $cap := index $limits (index $setting 2) | default (index $setting 3) | int }}
{{- if gt $default $cap }}
{{- fail (printf "hooks.limits.%s: %d is more than hooks.limits.%s (%d), the most a pool plugin may ask for, and pool plugins that ask for nothing get it: raise hooks.limits.%s too, or lower hooks.limits.%s" (index $setting 0) $default (index $setting 2) $cap (index $setting 2) (index $setting 0)) }}
{{- end }}
{{- end }}
{{- $seen := dict }}
{{- range $i, $p := .Values.hooks.plugins }}
{{- $where := printf "hooks.plugins[%d] (%s)" $i $p.name }}
{{- if hasKey $seen $p.name }}
{{- fail (printf "%s: the name %q is used twice; give each plugin its own name" $where $p.name) }}
{{- end }}
{{- $_ := set $seen $p.name true }}
{{- if and $p.configMap $p.file }}
{{- fail (printf "%s: set configMap or file, not both" $where) }}
{{- end }}
{{- if not (or $p.configMap $p.file) }}
{{- fail (printf "%s: set configMap (an existing ConfigMap with the module) or file (a file inside the chart)" $where) }}
{{- end }}
{{- if $p.file }}
{{- $bytes := $.Files.GetBytes $p.file }}
{{- if not $bytes }}
{{- fail (printf "%s: file %q is not in the chart (paths are relative to the chart directory; for modules built elsewhere create a ConfigMap and use configMap)" $where $p.file) }}
{{- end }}
{{- if gt (len $bytes) 1048576 }}
{{- fail (printf "%s: file %q has %d bytes, more than a ConfigMap holds (1 MiB); gzip it or create the ConfigMap yourself and use configMap" $where $p.file (len $bytes)) }}
{{- end }}
{{- if $p.key }}
{{- fail (printf "%s: key is only for configMap; a file's key is its base name" $where) }}
{{- end }}
{{- end }}
{{- end }}
{{- $seen = dict }}
{{- range $i, $p := .Values.hooks.policies }}
{{- $where := printf "hooks.policies[%d] (%s)" $i $p.name }}
{{- if hasKey $seen $p.name }}
{{- fail (printf "%s: the name %q is used twice; give each policy its own name" $where $p.name) }}
{{- end }}
{{- $_ := set $seen $p.name true }}
{{- $sources := 0 }}
{{- if $p.rego }}{{ $sources = add1 $sources }}{{ end }}
{{- if $p.file }}{{ $sources = add1 $sources }}{{ end }}
{{- if $p.configMap }}{{ $sources = add1 $sources }}{{ end }}
{{- if ne $sources 1 }}
{{- fail (printf "%s: set exactly one of rego (inline), file (a file inside the chart) or configMap (with key)" $where) }}
{{- end }}
{{- if and $p.configMap (not $p.key) }}
{{- fail (printf "%s: configMap needs key (the ConfigMap key that holds the policy)" $where) }}
{{- end }}
{{- if and $p.key (not $p.configMap) }}
{{- fail (printf "%s: key is only for configMap" $where) }}
{{- end }}
{{- if and $p.file (not ($.Files.Get $p.file)) }}
{{- fail (printf "%s: file %q is not in the chart (or is empty); paths are relative to the chart directory" $where $p.file) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The operator's hook configuration (--hook-config), in the format of src/hooks/config.rs.
*/}}
{{- define "workerpool-operator.hookConfig" -}}
{{- $plugins := list }}
{{- range .Values.hooks.plugins }}
{{- $entry := dict "name" .name }}
{{- if .file }}
{{- $_ := set $entry "configMap" (include "workerpool-operator.pluginConfigMapName" (list $ .)) }}
{{- $_ := set $entry "key" (base .file) }}
{{- else }}
{{- $_ := set $entry "configMap" .configMap }}
{{- with .key }}{{ $_ := set $entry "key" . }}{{ end }}
{{- end }}
{{- if hasKey . "settings" }}{{ $_ := set $entry "settings" .settings }}{{ end }}
{{- with .failurePolicy }}{{ $_ := set $entry "failurePolicy" . }}{{ end }}
{{- with .timeoutMillis }}{{ $_ := set $entry "timeoutMillis" . }}{{ end }}
{{- with .memoryLimitMib }}{{ $_ := set $entry "memoryLimitMib" . }}{{ end }}
{{- $plugins = append $plugins $entry }}
{{- end }}
{{- $policies := list }}
{{- range .Values.hooks.policies }}
{{- $entry := dict "name" .name }}
{{- if .configMap }}
{{- $_ := set $entry "configMap" .configMap }}
{{- $_ := set $entry "key" .key }}
{{- else }}
{{- $_ := set $entry "configMap" (include "workerpool-operator.policiesConfigMapName" $) }}
{{- $_ := set $entry "key" (printf "%s.rego" .name) }}
{{- end }}
{{- with .regoVersion }}{{ $_ := set $entry "regoVersion" . }}{{ end }}
{{- $policies = append $policies $entry }}
{{- end }}
{{- toYaml (dict "plugins" $plugins "policies" $policies "limits" .Values.hooks.limits) }}
{{- end }}
