{{/* Full name: the release name, with the chart name appended unless it is in it. */}}
{{- define "rlpost.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
Name of cluster-scoped objects: unique per release AND namespace, so two tenants can install
releases with the same name side by side.
*/}}
{{- define "rlpost.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "rlpost.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rlpost.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rlpost
{{ include "rlpost.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The operator pod. Job pods use app.kubernetes.io/name=rlpost + instance=<job>. */}}
{{- define "rlpost.selectorLabels" -}}
app.kubernetes.io/name: rlpost-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rlpost.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rlpost.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The watched namespaces (namespace scope), as a list. */}}
{{- define "rlpost.watchNamespaces" -}}
{{- $ns := .Values.watch.namespaces | default (list .Release.Namespace) -}}
{{- toYaml (uniq $ns) -}}
{{- end -}}

{{- define "rlpost.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Rules the operator needs in every namespace it reconciles jobs in (a Role there, or the
ClusterRole in cluster-wide mode). Keep in step with operator/ (docs/CONTRACTS.md).
*/}}
{{- define "rlpost.namespacedRules" -}}
# Its own custom resource: read, finalizers, status.
- apiGroups: [rlpost.dev]
  resources: [rlposttrainjobs]
  verbs: [get, list, watch, patch, update]
- apiGroups: [rlpost.dev]
  resources: [rlposttrainjobs/status, rlposttrainjobs/finalizers]
  verbs: [get, patch, update]
# The Kueue protocol: one Workload per job, its status (clear quota reservation, Finished).
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads/status]
  verbs: [get, patch, update]
- apiGroups: [kueue.x-k8s.io]
  resources: [localqueues]
  verbs: [get, list, watch]
# The job's children. The gang is pods the operator creates itself (no StatefulSets or
# Deployments): server-side applied, deleted on eviction, restart or finish.
# Never pods/exec, /attach, /portforward.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps, secrets, serviceaccounts]
  verbs: [get, list, watch, create, patch, update, delete]
# The per-job state volume `<job>-state` (checkpoints, buffer samples), owned by the job.
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, delete]
# Per-job Role/RoleBinding (the trainer patches `<job>-progress`).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, update, delete]
# Per-job NetworkPolicy (buffer/router/engine ports only from the job's own pods).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* Cluster-scoped reads: Kueue's flavors/queues/priority classes, CRD discovery. */}}
{{- define "rlpost.clusterRules" -}}
- apiGroups: [kueue.x-k8s.io]
  resources: [resourceflavors, clusterqueues, workloadpriorityclasses]
  verbs: [get, list, watch]
# Nodes: a pod asking for more GPUs than any node of its queue's flavors is InvalidSpec
# before admission (read only).
- apiGroups: [""]
  resources: [nodes]
  verbs: [get, list]
# StorageClasses: a claim the PV controller binds on its own (Immediate) is bound before
# the pods that mount it are made; one WaitForFirstConsumer binds with its first pod.
- apiGroups: [storage.k8s.io]
  resources: [storageclasses]
  verbs: [get, list]
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end -}}
