"""Configuration history: distinct versions per device, diffs, section summaries, change events.

``base`` holds the shapes every part shares (stores, writers, views); see DESIGN.md "History".
"""
