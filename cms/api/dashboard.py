"""The dashboard at GET /: one self-contained page (no external assets) polling /v1 every 2 s."""

HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cms dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.2em;background:#fafafa;color:#222}
h1{font-size:1.3em;margin:0 0 .4em} h2{font-size:1.05em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;min-width:40em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;font-variant-numeric:tabular-nums}
th{background:#f0f0f0} .down{color:#b00} .ok{color:#070} .muted{color:#888}
svg{vertical-align:middle} #status{float:right;color:#888}
</style></head><body>
<h1>cms <span id="status">loading…</span></h1>
<h2>Hosts</h2><table id="hosts"></table>
<h2>Replica groups</h2><div id="groups"></div>
<h2>VMs</h2><table id="vms"></table>
<h2>Recent events</h2><table id="events"></table>
<script>
"use strict";
const esc = s => String(s).replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
function spark(vals){
  const w=120,h=24; if(!vals||!vals.length) return '<span class="muted">no samples</span>';
  const n=vals.length, pts=vals.map((v,i)=>((n===1?w:i*w/(n-1)).toFixed(1))+','+(h-Math.max(0,Math.min(1,v))*h).toFixed(1)).join(' ');
  return '<svg width="'+w+'" height="'+h+'" viewBox="0 0 '+w+' '+h+'"><rect width="'+w+'" height="'+h+'" fill="#f4f8ff"/>'+
    '<polyline fill="none" stroke="#36c" stroke-width="1.5" points="'+pts+'"/></svg> '+Math.round(vals[n-1]*100)+'%';
}
function table(el, head, rows){
  document.getElementById(el).innerHTML='<tr>'+head.map(h=>'<th>'+esc(h)+'</th>').join('')+'</tr>'+
    (rows.length?rows.map(r=>'<tr>'+r.map(c=>'<td>'+c+'</td>').join('')+'</tr>').join(''):
     '<tr><td colspan="'+head.length+'" class="muted">none</td></tr>');
}
async function get(p){ const r=await fetch(p,{cache:"no-store"}); if(!r.ok) throw new Error(p+': '+r.status); return r.json(); }
async function tick(){
  try{
    const [h,g,v,e]=await Promise.all([get('/v1/hosts'),get('/v1/groups'),get('/v1/vms'),get('/v1/events?order=desc&limit=25')]);
    table('hosts',['pmid','name','uri','state','vCPU used / free','RAM MiB (cap / free)','disk GiB (cap / free)','VMs'],
      h.hosts.map(x=>[x.pmid,esc(x.name),esc(x.uri),x.up?'<span class="ok">up</span>':'<span class="down">down</span>',
        x.used.vcpus+' / '+x.free.cpu, x.capacity.ram+' / '+x.free.ram, x.capacity.disk+' / '+x.free.disk, x.vms]));
    document.getElementById('groups').innerHTML = g.groups.map(gr=>{
      const rows = gr.replicas.map(r=>'<tr><td>'+esc(r.name)+'</td><td>'+esc(r.host)+'</td><td>'+esc(r.state)+'</td><td>'+spark(r.cpu)+'</td></tr>').join('');
      return '<h3>'+esc(gr.name)+' <span class="muted">('+gr.replicas.length+' replicas, min '+gr.min+', max '+gr.max+
        ', policy '+esc(gr.policy.name)+(gr.desired_override?', asked for '+gr.desired_override.replicas+' (pending)':'')+')</span></h3>'+
        '<table><tr><th>replica</th><th>host</th><th>state</th><th>CPU</th></tr>'+(rows||'<tr><td colspan="4" class="muted">no replicas</td></tr>')+'</table>';
    }).join('') || '<p class="muted">no groups</p>';
    table('vms',['vmid','name','type','pmid','domain','state'],
      v.vms.map(x=>[x.vmid,esc(x.name),x.instance_type,x.pmid,esc(x.domain),esc(x.state)]));
    const ev=e.events;
    table('events',['id','time','kind','group','subject','message'],
      ev.map(x=>[x.id,new Date(x.ts*1000).toLocaleTimeString(),esc(x.kind),esc(x.group),esc(x.subject),esc(x.message)]));
    document.getElementById('status').textContent='updated '+new Date().toLocaleTimeString();
  }catch(err){ document.getElementById('status').textContent='error: '+err.message; }
}
tick(); setInterval(tick, 2000);
</script></body></html>
"""
