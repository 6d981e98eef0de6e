// Sluice's asciicast v2 player: a small terminal (printable text, CR/LF,
// backspace, tabs, cursor movement and erase sequences; colours are
// dropped) drawn into a <pre> with textContent, with play/pause, seek and
// speed. Written for the console; what it shows is the recording as the
// gateway stored it, after masking.
'use strict';

(function () {
  function Screen(cols, rows) {
    this.cols = Math.max(1, Math.min(cols || 80, 500));
    this.rows = Math.max(1, Math.min(rows || 24, 200));
    this.reset();
  }
  Screen.prototype.reset = function () {
    this.lines = [];
    for (let i = 0; i < this.rows; i++) this.lines.push(new Array(this.cols).fill(' '));
    this.x = 0; this.y = 0; this.state = 0; this.params = ''; this.scrollback = [];
  };
  Screen.prototype.resize = function (cols, rows) {
    if (Math.min(cols, 500) === this.cols && Math.min(rows, 200) === this.rows) return;
    const text = this.text();
    this.cols = Math.max(1, Math.min(cols, 500)); this.rows = Math.max(1, Math.min(rows, 200));
    this.reset(); this.write(text.replace(/\n/g, '\r\n'));
  };
  Screen.prototype.newline = function () {
    this.y++;
    if (this.y >= this.rows) {
      this.scrollback.push(this.lines.shift());
      if (this.scrollback.length > 1000) this.scrollback.shift();
      this.lines.push(new Array(this.cols).fill(' '));
      this.y = this.rows - 1;
    }
  };
  Screen.prototype.put = function (ch) {
    if (this.x >= this.cols) { this.x = 0; this.newline(); }
    this.lines[this.y][this.x] = ch; this.x++;
  };
  Screen.prototype.clamp = function () {
    this.x = Math.max(0, Math.min(this.x, this.cols - 1));
    this.y = Math.max(0, Math.min(this.y, this.rows - 1));
  };
  Screen.prototype.csi = function (final, params) {
    const nums = params.replace(/^[?>=]/, '').split(';').map((n) => parseInt(n, 10));
    const n = (i, d) => (isNaN(nums[i]) || nums[i] === 0 ? d : nums[i]);
    const blank = () => new Array(this.cols).fill(' ');
    switch (final) {
      case 'A': this.y -= n(0, 1); break;
      case 'B': this.y += n(0, 1); break;
      case 'C': this.x += n(0, 1); break;
      case 'D': this.x -= n(0, 1); break;
      case 'G': this.x = n(0, 1) - 1; break;
      case 'd': this.y = n(0, 1) - 1; break;
      case 'H': case 'f': this.y = n(0, 1) - 1; this.x = n(1, 1) - 1; break;
      case 'J': {
        const mode = nums[0] || 0;
        if (mode === 2 || mode === 3) { for (let i = 0; i < this.rows; i++) this.lines[i] = blank(); }
        else if (mode === 0) { for (let i = this.x; i < this.cols; i++) this.lines[this.y][i] = ' '; for (let r = this.y + 1; r < this.rows; r++) this.lines[r] = blank(); }
        else if (mode === 1) { for (let r = 0; r < this.y; r++) this.lines[r] = blank(); for (let i = 0; i <= this.x && i < this.cols; i++) this.lines[this.y][i] = ' '; }
        break;
      }
      case 'K': {
        const mode = nums[0] || 0, line = this.lines[this.y];
        const [from, to] = mode === 0 ? [this.x, this.cols] : mode === 1 ? [0, this.x + 1] : [0, this.cols];
        for (let i = from; i < to && i < this.cols; i++) line[i] = ' ';
        break;
      }
      case 'P': { const line = this.lines[this.y]; line.splice(this.x, n(0, 1)); while (line.length < this.cols) line.push(' '); break; }
      case '@': { // at most the rest of the line: a huge count must not stall the page
        const line = this.lines[this.y], k = Math.max(0, Math.min(n(0, 1), this.cols - this.x));
        line.splice(this.x, 0, ...new Array(k).fill(' ')); line.length = this.cols; break;
      }
      default: break; // colours (m), modes (h/l) and the rest change nothing visible here
    }
    this.clamp();
  };
  Screen.prototype.write = function (data) {
    for (const ch of data) {
      if (this.state === 1) { // after ESC
        if (ch === '[') { this.state = 2; this.params = ''; }
        else if (ch === ']') { this.state = 3; }
        else if (ch === 'c') { this.reset(); }
        else { this.state = 0; }
        if (this.state === 1) this.state = 0;
        continue;
      }
      if (this.state === 2) { // CSI parameters until a final byte
        if (ch >= '@' && ch <= '~') { this.state = 0; this.csi(ch, this.params); }
        else if (this.params.length < 64) this.params += ch;
        continue;
      }
      if (this.state === 3) { // OSC until BEL or ESC \
        if (ch === '\x07') this.state = 0;
        else if (ch === '\x1b') this.state = 4;
        continue;
      }
      if (this.state === 4) { this.state = 0; continue; }
      switch (ch) {
        case '\x1b': this.state = 1; break;
        case '\r': this.x = 0; break;
        case '\n': this.newline(); break;
        case '\b': if (this.x > 0) this.x--; break;
        case '\t': this.x = Math.min(this.cols - 1, (Math.floor(this.x / 8) + 1) * 8); break;
        case '\x07': break;
        default: if (ch >= ' ') this.put(ch);
      }
    }
  };
  Screen.prototype.text = function () {
    const lines = this.lines.map((l) => l.join('').replace(/\s+$/, ''));
    while (lines.length && lines[lines.length - 1] === '') lines.pop();
    return lines.join('\n');
  };

  function parse(cast) {
    const lines = cast.split('\n').filter((l) => l.trim() !== '');
    const header = JSON.parse(lines[0]);
    const events = [];
    for (const l of lines.slice(1)) {
      try { const e = JSON.parse(l); if (Array.isArray(e) && typeof e[0] === 'number') events.push(e); } catch (err) { /* skip a bad line */ }
    }
    return { header, events, duration: events.length ? events[events.length - 1][0] : 0 };
  }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Mounts a player for `cast` (asciicast v2 text) into `box`.
  function mount(box, cast) {
    const rec = parse(cast);
    const screen = new Screen(rec.header.width, rec.header.height);
    const term = el('pre', { class: 'term', 'aria-label': 'terminal recording', tabindex: '0' });
    const play = el('button', { type: 'button', class: 'play' }, 'Play');
    const seek = el('input', { type: 'range', min: '0', max: String(Math.ceil(rec.duration * 1000)), value: '0', step: '10', 'aria-label': 'position' });
    const speed = el('select', { 'aria-label': 'speed' });
    for (const s of ['0.5', '1', '2', '4', '8']) { const o = el('option', { value: s }, s + '×'); if (s === '1') o.selected = true; speed.appendChild(o); }
    const clock = el('span', { class: 'mono clock' }, '0.0s');
    const controls = el('div', { class: 'player-controls' });
    controls.append(play, seek, speed, clock);
    while (box.firstChild) box.removeChild(box.firstChild);
    box.append(controls, term);

    // A recording may hold any number of size changes (a hostile client can
    // send thousands); each redraws the screen, so only the first ones count.
    const MAX_RESIZES = 500;
    let pos = 0, next = 0, playing = false, timer = null, last = 0, resizes = 0;
    function render() { term.textContent = screen.text(); clock.textContent = (pos / 1000).toFixed(1) + 's / ' + rec.duration.toFixed(1) + 's'; seek.value = String(pos); }
    function apply(until) {
      while (next < rec.events.length && rec.events[next][0] * 1000 <= until) {
        const [, type, data] = rec.events[next++];
        if (type === 'o') screen.write(String(data));
        else if (type === 'r' && resizes < MAX_RESIZES) { const m = /^(\d+)x(\d+)$/.exec(String(data)); if (m) { resizes++; screen.resize(+m[1], +m[2]); } }
      }
    }
    function seekTo(ms) { resizes = 0; screen.reset(); if (rec.header.width) screen.resize(rec.header.width, rec.header.height); next = 0; pos = ms; apply(ms); render(); }
    function tick() {
      const now = performance.now();
      pos += (now - last) * Number(speed.value); last = now;
      apply(pos); render();
      if (next >= rec.events.length) { pause(); pos = rec.duration * 1000; render(); }
    }
    function start() { if (next >= rec.events.length) seekTo(0); playing = true; last = performance.now(); play.textContent = 'Pause'; timer = setInterval(tick, 33); }
    function pause() { playing = false; play.textContent = 'Play'; clearInterval(timer); }
    play.addEventListener('click', () => (playing ? pause() : start()));
    seek.addEventListener('input', () => seekTo(Number(seek.value)));
    term.addEventListener('keydown', (ev) => {
      if (ev.key === ' ') { ev.preventDefault(); playing ? pause() : start(); }
      if (ev.key === 'ArrowRight') seekTo(Math.min(pos + 5000, rec.duration * 1000));
      if (ev.key === 'ArrowLeft') seekTo(Math.max(pos - 5000, 0));
    });
    // Show the whole recording first (the end state), ready to play.
    seekTo(rec.duration * 1000);
    return { play: start, pause, seekTo, text: () => screen.text() };
  }

  window.SluicePlayer = { mount, Screen, parse };
})();
