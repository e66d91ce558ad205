// Every control and heading inside the page's width, and no two of them on top of each
// other (tests/browser/test_browser.py: laid_out). Returns the problems found.
(root) => {
  const width = document.documentElement.clientWidth;
  const seen = [...document.querySelectorAll(root + ' :is(button, input, select, th, h1, h2, h3, h4, label, figcaption, .code, #play img, #play-url)')]
    .filter((e) => e.offsetParent !== null && getComputedStyle(e).visibility !== 'hidden')
    .map((e) => ({ e, r: e.getBoundingClientRect() }))
    .filter(({ r }) => r.width > 0 && r.height > 0);
  const problems = [];
  for (const { e, r } of seen) {
    // Inside the page, and visible without scrolling the box it is in (a card that scrolls
    // sideways would hide a table's buttons past its edge).
    let scroller = e.parentElement;
    while (scroller && !['auto', 'scroll', 'hidden'].includes(getComputedStyle(scroller).overflowX)) scroller = scroller.parentElement;
    const edge = scroller ? Math.min(width, scroller.getBoundingClientRect().right) : width;
    if (r.right > edge + 1) problems.push(`cut off: ${e.tagName} ${e.id || e.textContent.slice(0, 30)} right=${r.right} > ${edge}`);
  }
  for (let i = 0; i < seen.length; i++) for (let j = i + 1; j < seen.length; j++) {
    const a = seen[i], b = seen[j];
    if (a.e.contains(b.e) || b.e.contains(a.e)) continue;
    const w = Math.min(a.r.right, b.r.right) - Math.max(a.r.left, b.r.left);
    const h = Math.min(a.r.bottom, b.r.bottom) - Math.max(a.r.top, b.r.top);
    if (w > 2 && h > 2) problems.push(`overlap: ${a.e.tagName} "${a.e.textContent.slice(0, 20)}" and ${b.e.tagName} "${b.e.textContent.slice(0, 20)}"`);
  }
  if (document.documentElement.scrollWidth > width + 1) problems.push(`page scrolls sideways: ${document.documentElement.scrollWidth} > ${width}`);
  return problems;
}
