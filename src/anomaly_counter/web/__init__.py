"""The dashboard: server-rendered pages of a project's chronic anomalies and their stories."""
