"""Browser tests: the pages in real headless Chromium, driven by Playwright."""
