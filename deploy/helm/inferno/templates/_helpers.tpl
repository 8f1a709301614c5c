{{/* The same objects as `inferno k8s render` (src/inferno/k8s/render*.py) for the same values. */}}

{{- define "inferno.labels" -}}
app.kubernetes.io/name: inferno
app.kubernetes.io/instance: {{ .root.Values.name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "inferno.metadata" -}}
name: {{ .root.Values.name }}-{{ .component }}
namespace: {{ .root.Values.namespace }}
labels:
  {{- include "inferno.labels" . | nindent 2 }}
{{- end }}

{{/* An env entry read from a Secret: the chart's own (inline value given) or the user's. */}}
{{- define "inferno.secretEnv" -}}
{{- if .inline }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .root.Values.name }}-{{ .component }}
      key: {{ .key }}
{{- else if .ref }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name }}
      key: {{ .ref.key }}
{{- end }}
{{- end }}

{{- define "inferno.rbac" -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  {{- include "inferno.metadata" . | nindent 2 }}
automountServiceAccountToken: true
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  {{- include "inferno.metadata" . | nindent 2 }}
rules:
  {{- .rules | nindent 2 }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  {{- include "inferno.metadata" . | nindent 2 }}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {{ .root.Values.name }}-{{ .component }}
subjects:
- kind: ServiceAccount
  name: {{ .root.Values.name }}-{{ .component }}
  namespace: {{ .root.Values.namespace }}
{{- end }}

{{/* The pod template every component shares: uid 10001, read-only root, data in an emptyDir. */}}
{{- define "inferno.podSpec" -}}
serviceAccountName: {{ .root.Values.name }}-{{ .component }}
securityContext:
  runAsNonRoot: true
  runAsUser: 10001
  runAsGroup: 10001
  fsGroup: 10001
  seccompProfile:
    type: RuntimeDefault
volumes:
- name: data
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- end }}

{{- define "inferno.container" -}}
name: {{ .component }}
image: {{ .root.Values.image }}
imagePullPolicy: {{ .root.Values.imagePullPolicy }}
resources:
  {{- toYaml .resources | nindent 2 }}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop:
    - ALL
volumeMounts:
- name: data
  mountPath: /var/lib/inferno
- name: tmp
  mountPath: /tmp
{{- with .extraMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "inferno.probes" -}}
readinessProbe:
  httpGet:
    path: /health
    port: ops
  periodSeconds: 5
  failureThreshold: 2
livenessProbe:
  httpGet:
    path: /health
    port: ops
  periodSeconds: 10
  failureThreshold: 6
  timeoutSeconds: 5
{{- end }}
