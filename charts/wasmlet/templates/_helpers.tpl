{{/* The release's name for its objects, at most 63 characters. */}}
{{- define "wasmlet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wasmlet.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wasmlet.labels" -}}
{{ include "wasmlet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "wasmlet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "wasmlet.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The uninstall hook's account, never the installer's. */}}
{{- define "wasmlet.uninstallAccountName" -}}
{{- printf "%s-uninstall" (include "wasmlet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "wasmlet.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/*
The installer pods' affinity: the user's, with every required node
selector term also asking for an architecture the image has a build for
(terms are ORed, so each one needs it). A node of another architecture
never runs the installer, so it is never labelled and the RuntimeClass
never schedules a wasm pod there.
*/}}
{{- define "wasmlet.affinity" -}}
{{- $arch := dict "key" "kubernetes.io/arch" "operator" "In" "values" .Values.image.architectures -}}
{{- $affinity := deepCopy (.Values.affinity | default dict) -}}
{{- $node := get $affinity "nodeAffinity" | default dict -}}
{{- $required := get $node "requiredDuringSchedulingIgnoredDuringExecution" | default dict -}}
{{- $terms := list -}}
{{- range (get $required "nodeSelectorTerms" | default (list dict)) -}}
{{- $term := deepCopy . -}}
{{- $_ := set $term "matchExpressions" (append (get $term "matchExpressions" | default list) $arch) -}}
{{- $terms = append $terms $term -}}
{{- end -}}
{{- $_ := set $required "nodeSelectorTerms" $terms -}}
{{- $_ := set $node "requiredDuringSchedulingIgnoredDuringExecution" $required -}}
{{- $_ := set $affinity "nodeAffinity" $node -}}
{{- toYaml $affinity -}}
{{- end -}}

{{/*
The uninstall hook's account and its roles are pre-delete hooks made just
before the hook's Job (a lower weight) and deleted with it.
*/}}
{{- define "wasmlet.uninstallHookAnnotations" -}}
helm.sh/hook: pre-delete
helm.sh/hook-weight: "-5"
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded,hook-failed
{{- end -}}

{{/* The restart Leases are named PREFIX-0 to PREFIX-(maxConcurrentRestarts-1). */}}
{{- define "wasmlet.restartLeasePrefix" -}}
{{- printf "%s-restart" (include "wasmlet.fullname" .) | trunc 60 | trimSuffix "-" -}}
{{- end -}}
