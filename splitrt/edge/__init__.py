"""The edge agent: sources, the frame pipeline, and the link to the cloud."""
