{{/*
Chart name, shortened to the 63 characters a label value may hold.
*/}}
{{- define "mnv2-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: "<release>-<chart>", or the release name alone when it already contains the chart
name (so `helm install mnv2-operator .` gives "mnv2-operator", not "mnv2-operator-mnv2-operator").
*/}}
{{- define "mnv2-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart label value: "<name>-<version>".
*/}}
{{- define "mnv2-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "mnv2-operator.labels" -}}
helm.sh/chart: {{ include "mnv2-operator.chart" . }}
{{ include "mnv2-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: mnv2-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select the operator pod (immutable once the Deployment exists: keep them minimal).
*/}}
{{- define "mnv2-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mnv2-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "mnv2-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mnv2-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference "<repository>:<tag>", the tag defaulting to the chart's appVersion.
Call with (dict "image" .Values.image "root" .).
*/}}
{{- define "mnv2-operator.imageRef" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
The rules the operator needs in every namespace it watches: in a ClusterRole when it watches the whole
cluster, in one Role per namespace otherwise. Exactly the verbs the operator uses (docs/operator.md);
tests/integration/chart checks every request of an operator run against these rules.

What is left out on purpose: Secrets (never read; pull secrets are only named, within the admin's
policy), pods/exec, attach and serviceaccounts/token, update anywhere, delete of anything but its pods
and jobs, bind/escalate/impersonate, and every cluster-scoped write. What cannot be narrowed further:
create on pods, services, configmaps, serviceaccounts, roles and rolebindings takes no resourceNames
in Kubernetes RBAC, so these rules hold for every name in a watched namespace; the operator itself
touches only the job's children (a controller owner reference with the job's uid) and what a job can
ask for is limited by the policy values (docs/install.md, "Security model"). The trainer Role it
creates can never grant more than these rules (Kubernetes' escalation check). To keep the operator out
of namespaces that run no training (kube-system among them), set watchNamespaces.
*/}}
{{- define "mnv2-operator.namespacedRules" -}}
# The jobs: kopf lists and watches them; the operator reads each one before reconciling it and
# deletes it when ttlSecondsAfterFinished has passed.
- apiGroups: ["training.mnv2.dev"]
  resources: ["mobilenetv2trainingjobs"]
  verbs: ["get", "list", "watch", "delete"]
# The operator merge-patches its part of the status (phase, conditions, workers, restarts). It also
# needs get: the per-job trainer Role grants get + patch on the job's status, and Kubernetes lets the
# operator create that Role only because it holds both rights itself (RBAC escalation check).
- apiGroups: ["training.mnv2.dev"]
  resources: ["mobilenetv2trainingjobs/status"]
  verbs: ["get", "patch"]
# The training pods, one per node: watched through a kopf index, created per attempt, deleted on a
# gang restart, suspension or cleanup; get when a create finds a pod of that name (is it the job's?).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Per-job children, created once. When one exists already, the operator reads it (get) and, only if
# its controller owner reference is the job's, merge-patches it back to the rendered form; anything
# else of that name is left untouched. Headless Service, ConfigMap, the trainer's ServiceAccount ...
- apiGroups: [""]
  resources: ["services", "configmaps", "serviceaccounts"]
  verbs: ["get", "create", "patch"]
# ... and the trainer's Role (status of its own job only) with its binding.
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "create", "patch"]
# Kubernetes Events about the job (pods created, restarts, failures).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.rbac.gangScheduling }}
# Volcano PodGroups for gang-scheduled jobs.
- apiGroups: ["scheduling.volcano.sh"]
  resources: ["podgroups"]
  verbs: ["get", "create", "patch"]
{{- end }}
{{- end }}

{{/*
Cluster-scoped rules kopf needs in every mode: it scans the CRDs at start and watches them to notice
when the MobileNetV2TrainingJob CRD is (re)installed.
*/}}
{{- define "mnv2-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}
