"""Pure tests: the rules core and other synchronous code, no event loop, no sleeps."""
