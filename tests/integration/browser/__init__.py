"""Tests that drive the Store with a real web browser (headless Chromium via Selenium)."""
