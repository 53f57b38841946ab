{{/*
Paths on the node, from the platform preset or the overrides. kubelet execs
<pluginDir>/azure~kv/kv; the agent sees kubelet's pods dir at the node's own path (its rotation
records name the host's mount dirs).
*/}}
{{- define "kv.pluginDir" -}}
{{- $presets := dict
  "default" "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"
  "aks" "/etc/kubernetes/volumeplugins"
  "gke" "/home/kubernetes/flexvolume"
  "rke2" "/var/lib/kubelet/volumeplugins"
  "k3s" "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"
  "openshift" "/etc/kubernetes/kubelet-plugins/volume/exec" -}}
{{- .Values.pluginDir | default (get $presets .Values.platform) | trimSuffix "/" -}}
{{- end -}}

{{- define "kv.kubeletRootDir" -}}
{{- .Values.kubeletRootDir | default "/var/lib/kubelet" | trimSuffix "/" -}}
{{- end -}}

{{- define "kv.caCertsDir" -}}
{{- .Values.agent.caCertsDir | default (ternary "/etc/pki/tls/certs" "/etc/ssl/certs" (eq .Values.platform "openshift")) | trimSuffix "/" -}}
{{- end -}}

{{/*
Where kv keeps node state and its log, from the node config itself (stateDir, log.path), so
the agent mounts exactly what every mount uses. Each must be a directory of kv's own: the agent
gets it read-write.
*/}}
{{- define "kv.stateDir" -}}
{{- $dir := .Values.config.stateDir | default "/run/kv" | trimSuffix "/" -}}
{{- include "kv.ownDir" (list "config.stateDir" $dir) -}}
{{- $dir -}}
{{- end -}}

{{- define "kv.logDir" -}}
{{- $log := dict -}}
{{- if .Values.config.log }}{{ $log = .Values.config.log }}{{ end -}}
{{- $dir := dir ($log.path | default "/var/log/kv/kv-driver.log") -}}
{{- include "kv.ownDir" (list "the directory of config.log.path" $dir) -}}
{{- $dir -}}
{{- end -}}

{{- define "kv.ownDir" -}}
{{- $what := index . 0 -}}
{{- $dir := index . 1 -}}
{{- if has $dir (list "/" "/run" "/var" "/var/log" "/var/lib" "/var/run" "/tmp" "/etc" "/usr" "/home" "/root") -}}
{{- fail (printf "%s is %s: give kv a directory of its own (e.g. /var/log/kv, /run/kv): the agent mounts it read-write" $what $dir) -}}
{{- end -}}
{{- end -}}

{{- define "kv.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else if .Values.image.tag -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- else -}}
{{- fail "image.digest (preferred) or image.tag is required" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. The selectors use app.kubernetes.io/name alone, as installer/base does. */}}
{{- define "kv.labels" -}}
app.kubernetes.io/part-of: kv
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The node config as kv reads it. */}}
{{- define "kv.json" -}}
{{- .Values.config | toJson -}}
{{- end -}}

{{/* What the pods of both DaemonSets share. */}}
{{- define "kv.podCommon" -}}
serviceAccountName: kv
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if eq .Values.platform "openshift" }}
# RHCOS labels the plugin dir and /run for the host: only spc_t may write there (not verified
# on an OpenShift cluster).
securityContext:
  seLinuxOptions:
    type: spc_t
{{- end }}
terminationGracePeriodSeconds: 10
{{- end -}}

{{/* Pod template metadata: labels, the config checksum, the user's annotations. */}}
{{- define "kv.podMeta" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
labels:
  app.kubernetes.io/name: {{ $name }}
  app.kubernetes.io/part-of: kv
  {{- with $root.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  # A change of config rolls the pods: the installer installs the new kv.json, the agent
  # restarts with it.
  checksum/config: {{ include "kv.json" $root | sha256sum }}
  {{- with $root.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{- define "kv.updateStrategy" -}}
updateStrategy:
  type: RollingUpdate
  rollingUpdate:
    maxUnavailable: {{ .Values.updateStrategy.maxUnavailable }}
{{- end -}}
