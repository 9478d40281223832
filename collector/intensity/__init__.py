"""Grid carbon intensity providers: each one turns a zone and a time range into a StepSeries."""
