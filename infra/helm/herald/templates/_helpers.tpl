{{- define "herald.name" -}}{{ .Release.Name }}-herald{{- end -}}
{{- define "herald.labels" -}}
app.kubernetes.io/name: herald
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "herald.secretName" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecret }}{{- else -}}{{ include "herald.name" . }}{{- end -}}
{{- end -}}
{{- define "herald.terminationGrace" -}}
{{- $d := .Values.drain -}}
{{- add $d.preStopSleepSecs (div (add $d.drainDelayMs 999) 1000) $d.shutdownGraceSecs $d.terminationSlackSecs -}}
{{- end -}}
