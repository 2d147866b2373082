"""Features that span the stages, through one in-process Pipeline (app.py and everything it wires):
exporter filtering, [limits], the batch fast paths, sFlow alerts, the dashboard's metrics. No socket."""
