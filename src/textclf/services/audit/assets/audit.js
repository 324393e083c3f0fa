const DATA = JSON.parse(document.getElementById('audit-data').textContent);
const rows = DATA.rows, server = DATA.server, labels = DATA.labels, multi = DATA.task === 'multilabel';
let sortKey = 'self_confidence', sortDir = 1;
const $ = (s) => document.querySelector(s);
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c])); }
function csvField(v) { v = v == null ? '' : String(v); return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
function relabelCsv() {
  const lines = ['row,text,given,suggested,decision,new_label'];
  for (const r of [...rows].sort((a, b) => a.row - b.row))
    lines.push([r.row, r.text, r.given, r.suggested, r.decision || '', r.new_label || ''].map(csvField).join(','));
  return lines.join('\n') + '\n';
}
function visible(r) {
  const maxConf = parseFloat($('#max-conf').value);
  const cls = $('#class').value, vote = $('#vote').value, q = $('#search').value.toLowerCase();
  if (!isNaN(maxConf) && r.self_confidence > maxConf) return false;
  if (cls && !(r.given.split('|').includes(cls) || r.suggested.split('|').includes(cls))) return false;
  const n = Object.keys(r.votes).length;
  if (vote === 'all' && r.agree !== n) return false;
  if (vote === 'some' && !(r.agree > 0 && r.agree < n)) return false;
  if (vote === 'none' && r.agree !== 0) return false;
  if (vote === 'undecided' && r.decision) return false;
  if (q && !r.text.toLowerCase().includes(q)) return false;
  return true;
}
function render() {
  const shown = rows.filter(visible).sort((a, b) => {
    const x = a[sortKey], y = b[sortKey];
    return (x < y ? -1 : x > y ? 1 : a.row - b.row) * sortDir;
  });
  const fams = DATA.families;
  $('#suspects tbody').innerHTML = shown.map(r => `<tr data-row="${r.row}" class="${r.decision ? 'decided' : ''}">
    <td class="num">${r.row}</td><td class="text">${esc(r.text)}</td>
    <td class="given">${esc(r.given)}</td><td class="suggested">${esc(r.suggested)}</td>
    <td class="num conf">${r.self_confidence.toFixed(3)}</td>
    <td>${fams.map(f => `<span class="tag" title="${esc(f)}">${esc(f)}: ${esc(r.votes[f])}</span>`).join('')}<br><small>${r.agree}/${fams.length} agree</small></td>
    <td>${r.issues.map(i => `<span class="tag">${esc(i)}</span>`).join('')}${r.labels.length ? '<br><small>' + esc(r.labels.join(', ')) + '</small>' : ''}</td>
    <td class="dec">${['keep','relabel','drop'].map(d => `<button type="button" data-decision="${d}" class="${r.decision === d ? 'on' : ''}">${d}</button>`).join('')}
      <br><input class="new-label" list="label-list" size="12" placeholder="${esc(r.suggested)}" value="${esc(r.new_label || '')}" ${r.decision === 'relabel' ? '' : 'disabled'}></td></tr>`).join('');
  $('#count').textContent = `${shown.length} of ${rows.length} suspects shown, ${rows.filter(r => r.decision).length} decided`;
  document.querySelectorAll('#suspects th').forEach(th => {
    th.classList.toggle('sorted-asc', th.dataset.key === sortKey && sortDir === 1);
    th.classList.toggle('sorted-desc', th.dataset.key === sortKey && sortDir === -1);
  });
}
function byRow(n) { return rows.find(r => r.row === n); }
async function save(r) {
  if (!server) return;
  const res = await fetch('api/decisions', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify([{row: r.row, decision: r.decision, new_label: r.new_label || ''}])});
  $('#status').textContent = res.ok ? `saved row ${r.row} to relabel.csv` : `not saved: ${(await res.json()).detail}`;
}
document.addEventListener('click', (e) => {
  const b = e.target.closest('button[data-decision]');
  if (b) {
    const r = byRow(+b.closest('tr').dataset.row);
    r.decision = r.decision === b.dataset.decision ? '' : b.dataset.decision;
    if (r.decision === 'relabel' && !r.new_label) r.new_label = r.suggested;
    if (r.decision !== 'relabel') r.new_label = '';
    render(); save(r); return;
  }
  const th = e.target.closest('#suspects th[data-key]');
  if (th) { sortDir = th.dataset.key === sortKey ? -sortDir : 1; sortKey = th.dataset.key; render(); }
});
document.addEventListener('change', (e) => {
  if (!e.target.classList.contains('new-label')) return;
  const r = byRow(+e.target.closest('tr').dataset.row);
  r.new_label = e.target.value.trim(); save(r);
});
['#max-conf', '#class', '#vote', '#search'].forEach(s => $(s).addEventListener('input', render));
$('#download').addEventListener('click', () => {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(new Blob([relabelCsv()], {type: 'text/csv'}));
  a.download = 'relabel.csv'; document.body.appendChild(a); a.click(); a.remove();
});
$('#copy').addEventListener('click', async () => {
  const text = relabelCsv();
  try { await navigator.clipboard.writeText(text); $('#status').textContent = 'relabel.csv copied'; }
  catch (err) { const t = $('#csv-out'); t.hidden = false; t.value = text; t.select(); document.execCommand('copy');
                $('#status').textContent = 'relabel.csv selected below: copy it'; }
});
render();
