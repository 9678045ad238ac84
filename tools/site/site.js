// The offline site's behaviour: dark mode, the phone menu, copy buttons and full-text search.
// Everything runs from file:// with no server and no network: the search index is a script
// (search-index.js) that sets window.BOOK_INDEX, not a file fetched at run time.
(function () {
  const root = document.documentElement;

  function setTheme(theme) {
    root.dataset.theme = theme;
    try { localStorage.setItem('book-theme', theme); } catch (e) { /* file:// may refuse */ }
  }

  function wireTheme() {
    const button = document.getElementById('theme-toggle');
    if (!button) return;
    button.addEventListener('click', () => {
      setTheme(root.dataset.theme === 'dark' ? 'light' : 'dark');
    });
  }

  function wireMenu() {
    const button = document.getElementById('menu-toggle');
    if (!button) return;
    button.addEventListener('click', () => {
      const open = document.body.classList.toggle('menu-open');
      button.setAttribute('aria-expanded', String(open));
    });
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    const area = document.createElement('textarea');
    area.value = text;
    document.body.appendChild(area);
    area.select();
    document.execCommand('copy');
    area.remove();
    return Promise.resolve();
  }

  function addCopyButtons() {
    document.querySelectorAll('.input_area .highlight').forEach((block) => {
      const button = document.createElement('button');
      button.className = 'copy';
      button.type = 'button';
      button.textContent = 'Copy';
      button.setAttribute('aria-label', 'Copy the code');
      button.addEventListener('click', () => {
        copyText(block.querySelector('pre').innerText).then(() => {
          button.textContent = 'Copied';
          setTimeout(() => { button.textContent = 'Copy'; }, 1500);
        });
      });
      block.appendChild(button);
    });
  }

  // --- search: every query word must occur; title and heading matches rank first
  function words(query) {
    return query.toLowerCase().split(/\s+/).filter((w) => w.length > 1);
  }

  function score(entry, terms) {
    const title = entry.title.toLowerCase(), heading = entry.heading.toLowerCase();
    const text = entry.text.toLowerCase();
    let total = 0;
    for (const term of terms) {
      const hits = (title.includes(term) ? 20 : 0) + (heading.includes(term) ? 10 : 0);
      const inText = text.split(term).length - 1;
      if (!hits && !inText) return 0;
      total += hits + Math.min(inText, 10);
    }
    return total;
  }

  function snippet(text, term) {
    const at = Math.max(0, text.toLowerCase().indexOf(term));
    const start = Math.max(0, at - 60);
    return (start ? '…' : '') + text.slice(start, at + 120) + '…';
  }

  function resultItem(entry, terms) {
    const item = document.createElement('li');
    const link = document.createElement('a');
    link.href = entry.url;
    const where = entry.heading ? entry.title + ' › ' + entry.heading : entry.title;
    link.textContent = where;
    const text = document.createElement('div');
    text.className = 'snippet';
    text.textContent = snippet(entry.text, terms[0]);
    item.append(link, text);
    return item;
  }

  function search(query) {
    const terms = words(query), index = window.BOOK_INDEX || [];
    if (!terms.length) return [];
    return index
      .map((entry) => [score(entry, terms), entry])
      .filter(([s]) => s > 0)
      .sort((a, b) => b[0] - a[0])
      .slice(0, 20)
      .map(([, entry]) => entry);
  }

  function wireSearch() {
    const input = document.getElementById('search'), list = document.getElementById('hits');
    if (!input || !list) return;
    input.addEventListener('input', () => {
      const found = search(input.value), terms = words(input.value);
      list.replaceChildren(...found.map((e) => resultItem(e, terms)));
      list.hidden = !input.value.trim();
      if (!found.length && input.value.trim()) {
        const none = document.createElement('li');
        none.textContent = 'Nothing found';
        list.append(none);
      }
    });
    input.addEventListener('keydown', (event) => {
      const first = list.querySelector('a');
      if (event.key === 'Enter' && first) window.location.href = first.href;
      if (event.key === 'Escape') { input.value = ''; list.hidden = true; }
    });
  }

  // a link to something inside a collapsed solution opens it
  function openTarget() {
    const id = decodeURIComponent(window.location.hash.slice(1));
    let node = id && document.getElementById(id);
    while (node) {
      if (node.tagName === 'DETAILS') node.open = true;
      node = node.parentElement;
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    wireTheme(); wireMenu(); addCopyButtons(); wireSearch(); openTarget();
    window.addEventListener('hashchange', openTarget);
  });
})();
