"""The live status page served on ``/``: what a person opening the endpoint in a browser reads.

The page is rendered whole on the server from the status (so it reads without JavaScript),
then an inline script fetches ``/status`` and ``/status/history`` once a second and redraws the
tables and three small SVG charts in place: throughput, open streams and RTT over the minutes
the history holds. Nothing is loaded from elsewhere (no script, font or style), so the page
works on an isolated host and through ``kubectl port-forward``.

Every string in the status may have come from a peer (a client's name, an error it caused):
the server escapes it with html.escape; the script only ever sets ``textContent`` and
attributes of numbers, never markup.
"""

from __future__ import annotations

import html
from typing import Any

from tunnel.settings.wording import rate, size

# Column heading -> how a row's value is shown; the script has the same table (COLUMNS).
SESSION_COLUMNS = ("peer", "state", "rtt", "streams", "in/s", "out/s", "received", "sent",
                   "last error")  # fmt: skip
SERVICE_COLUMNS = ("service", "open", "total", "in/s", "out/s", "to backend", "to consumer",
                   "refused", "last refusal")  # fmt: skip
RECENT = 60.0  # seconds a service's refusal keeps its row marked

CHARTS = (("throughput", "Throughput"), ("streams", "Open streams"), ("rtt", "RTT"))


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _error(text: Any, at: Any, now: float) -> str:
    if not text:
        return "-"
    return f"{text} ({_age(now - at)})" if isinstance(at, int | float) else str(text)


def _rate(value: Any) -> str:
    return "-" if value is None else rate(value)


def _refused(row: dict[str, Any]) -> str:
    total = row.get("refused") or 0
    reasons = row.get("refusals") or {}
    if not total or not reasons:
        return str(total)
    return f"{total} (" + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())) + ")"


def session_cells(row: dict[str, Any], now: float) -> list[str]:
    rtt = row.get("rtt_ms")
    return [
        str(row.get("peer", "")),
        str(row.get("state", "")),
        "-" if rtt is None else f"{rtt:.1f} ms",
        str(row.get("streams", 0)),
        _rate(row.get("rate_in")),
        _rate(row.get("rate_out")),
        size(row.get("bytes_in") or 0),
        size(row.get("bytes_out") or 0),
        _error(row.get("last_error"), row.get("last_error_at"), now),
    ]


def service_cells(row: dict[str, Any], now: float) -> list[str]:
    return [
        str(row.get("service", "")),
        str(row.get("open_streams", 0)),
        str(row.get("streams_total", 0)),
        _rate(row.get("rate_in")),
        _rate(row.get("rate_out")),
        size(row.get("bytes_in") or 0),
        size(row.get("bytes_out") or 0),
        _refused(row),
        _error(row.get("last_error"), row.get("last_error_at"), now),
    ]


def session_class(row: dict[str, Any]) -> str:
    state = row.get("state")
    return "ok" if state == "up" else "warn" if state in ("hello", "draining") else "bad"


def service_class(row: dict[str, Any], now: float) -> str:
    at = row.get("last_error_at")
    return "bad" if isinstance(at, int | float) and now - at < RECENT else "ok"


def _table(table_id: str, columns: tuple[str, ...], rows: list[tuple[str, list[str]]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    # Each cell names its column, for the narrow layout where a row is a card.
    body = "".join(
        f'<tr class="{css}">'
        + "".join(
            f'<td data-label="{html.escape(c)}">{html.escape(v)}</td>'
            for c, v in zip(columns, cells, strict=True)
        )
        + "</tr>"
        for css, cells in rows
    )
    return (
        f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def state_line(status: dict[str, Any]) -> str:
    words = "ready" if status.get("ready") else "not ready"
    missing = status.get("missing") or []
    if missing:
        words += " (the server does not offer " + ", ".join(str(m) for m in missing) + ")"
    return f"{words}, up {float(status.get('uptime') or 0):.0f} s"


def render_html(status: dict[str, Any]) -> str:
    now = float(status.get("time") or 0)
    title = html.escape(f"{status.get('role', '?')} {status.get('name', '')}".strip())
    which = "Remotes" if status.get("role") == "ambassador-client" else "Sessions"
    sessions = list(status.get("remotes") or status.get("sessions") or [])
    workers = "workers" in status
    columns = ("worker", *SESSION_COLUMNS) if workers else SESSION_COLUMNS
    session_rows = [
        (session_class(row), ([str(row.get("worker", ""))] if workers else [])
         + session_cells(row, now))
        for row in sessions
    ]  # fmt: skip
    service_rows = [
        (service_class(row, now), service_cells(row, now)) for row in status.get("services") or []
    ]
    charts = "".join(
        f'<figure><figcaption>{caption} <span id="now-{key}"></span></figcaption>'
        f'<svg id="chart-{key}" viewBox="0 0 240 60" preserveAspectRatio="none" '
        f'data-last="" data-points="0"></svg></figure>'
        for key, caption in CHARTS
    )
    ready = "ready" if status.get("ready") else "not"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{title}</title><style>{STYLE}</style></head><body>"
        f"<h1 id='title'>{title}</h1>"
        f"<p id='state' class='{ready}'>{html.escape(state_line(status))}</p>"
        f"<div class='charts'>{charts}</div>"
        f"<h2>{which}</h2>{_table('sessions', columns, session_rows)}"
        f"<h2>Services</h2>{_table('services', SERVICE_COLUMNS, service_rows)}"
        "<p class='foot'><span id='updated'>as served</span> · <a href='/metrics'>metrics</a>"
        " · <a href='/status'>status JSON</a></p>"
        f"<script>{SCRIPT}</script></body></html>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:.2em 0;overflow-wrap:anywhere}h2{font-size:1.05em;margin:1em 0 .3em}
#state{font-weight:600}.ready{color:#070}.not{color:#b00}
.charts{display:flex;flex-wrap:wrap;gap:.6em}
figure{flex:1 1 15em;margin:0;background:#fff;border:1px solid #ddd;padding:.3em .5em}
figcaption{font-size:.85em;color:#555}figcaption span{color:#222;font-weight:600}
svg{width:100%;height:4.5em;display:block}
polyline{fill:none;stroke-width:1.5;vector-effect:non-scaling-stroke}
.in{stroke:#1565c0}.out{stroke:#2e7d32}.streams{stroke:#6a1b9a}.rtt{stroke:#e65100}
.scroll{overflow-x:auto}table{border-collapse:collapse;background:#fff;font-size:.9em}
td,th{border:1px solid #ddd;padding:.25em .5em;text-align:left;white-space:nowrap}
td:first-child,td:last-child{white-space:normal;overflow-wrap:anywhere;min-width:8em}
tr.bad td{background:#fde2e2;color:#a00}tr.warn td{background:#fff4d6}
.foot{font-size:.85em;color:#666}
@media (max-width:40em){thead{display:none}table,tbody,tr,td{display:block}
 tr{margin-bottom:.5em;border:1px solid #ddd}td,td:first-child,td:last-child{border:none;
 border-bottom:1px solid #eee;white-space:normal;min-width:0}
 td::before{content:attr(data-label) ": ";font-weight:600;color:#555}}
"""

# The script mirrors the server's rendering above; it writes text with textContent only.
SCRIPT = r"""
(function(){
const UNITS=["B","KiB","MiB","GiB","TiB","PiB"];
function size(n){let v=Number(n)||0,u=0;while(Math.abs(v)>=1024&&u<UNITS.length-1){v/=1024;u++;}
  return u?v.toFixed(1)+" "+UNITS[u]:Math.trunc(v)+" B";}
function rate(n){return n===null||n===undefined?"-":size(n)+"/s";}
function age(s){s=Math.max(0,s);if(s<90)return s.toFixed(0)+" s ago";
  if(s<5400)return (s/60).toFixed(0)+" min ago";return (s/3600).toFixed(1)+" h ago";}
function error(text,at,now){if(!text)return "-";
  return typeof at==="number"?text+" ("+age(now-at)+")":String(text);}
function refused(row){const total=row.refused||0,reasons=row.refusals||{};
  const keys=Object.keys(reasons).sort();if(!total||!keys.length)return String(total);
  return total+" ("+keys.map(k=>k+" "+reasons[k]).join(", ")+")";}
function sessionCells(r,now){return [String(r.peer??""),String(r.state??""),
  r.rtt_ms==null?"-":r.rtt_ms.toFixed(1)+" ms",String(r.streams??0),rate(r.rate_in),
  rate(r.rate_out),size(r.bytes_in),size(r.bytes_out),error(r.last_error,r.last_error_at,now)];}
function serviceCells(r,now){return [String(r.service??""),String(r.open_streams??0),
  String(r.streams_total??0),rate(r.rate_in),rate(r.rate_out),size(r.bytes_in),
  size(r.bytes_out),refused(r),error(r.last_error,r.last_error_at,now)];}
function sessionClass(r){
  return r.state==="up"?"ok":(r.state==="hello"||r.state==="draining")?"warn":"bad";}
function serviceClass(r,now){
  return typeof r.last_error_at==="number"&&now-r.last_error_at<60?"bad":"ok";}
function fill(id,rows){const body=document.querySelector("#"+id+" tbody");
  const labels=[...document.querySelectorAll("#"+id+" th")].map(th=>th.textContent);
  const fresh=document.createElement("tbody");
  for(const [css,cells] of rows){const tr=document.createElement("tr");tr.className=css;
    cells.forEach((c,i)=>{const td=document.createElement("td");td.textContent=c;
      td.dataset.label=labels[i]||"";tr.appendChild(td);});
    fresh.appendChild(tr);}
  body.replaceWith(fresh);}
function text(id,value){document.getElementById(id).textContent=value;}
function stateLine(s){let w=s.ready?"ready":"not ready";const m=s.missing||[];
  if(m.length)w+=" (the server does not offer "+m.map(String).join(", ")+")";
  return w+", up "+Number(s.uptime||0).toFixed(0)+" s";}
const SVG="http://www.w3.org/2000/svg";
function chart(key,series,span){const svg=document.getElementById("chart-"+key);
  while(svg.firstChild)svg.removeChild(svg.firstChild);
  let peak=0;for(const [,values] of series)for(const v of values)if(v!=null&&v>peak)peak=v;
  const top=peak>0?peak:1;
  let last="";
  for(const [css,values,ages] of series){const line=document.createElementNS(SVG,"polyline");
    const pts=[];values.forEach((v,i)=>{if(v==null)return;
      const x=240-240*Math.min(ages[i],span)/span,y=58-56*v/top;
      pts.push(x.toFixed(1)+","+y.toFixed(1));});
    line.setAttribute("points",pts.join(" "));line.setAttribute("class",css);svg.appendChild(line);
    if(last==="")last=values.length?values[values.length-1]:"";}
  svg.dataset.last=last===null?"":String(last);svg.dataset.points=String(series[0][1].length);
  svg.dataset.top=String(peak);}
function charts(h){const n=h.rate_in.length;
  // At least a minute across, growing to the whole ring as samples come.
  const span=Math.min((h.capacity||360)*(h.interval||1),Math.max(60,...h.age));
  chart("throughput",[["in",h.rate_in,h.age],["out",h.rate_out,h.age]],span);
  chart("streams",[["streams",h.streams,h.age]],span);
  chart("rtt",[["rtt",h.rtt_ms,h.age]],span);
  if(!n)return;
  const top=k=>document.getElementById("chart-"+k).dataset.top,r=h.rtt_ms[n-1];
  const over=" (top "+Math.round(span/60)+" min: ";
  text("now-throughput","in "+rate(h.rate_in[n-1])+" · out "+rate(h.rate_out[n-1])+over
    +rate(Number(top("throughput")))+")");
  text("now-streams",String(h.streams[n-1])+over+top("streams")+")");
  text("now-rtt",(r==null?"-":r.toFixed(1)+" ms")+over+Number(top("rtt")).toFixed(1)+" ms)");}
function draw(s){const now=s.time||0;const workers="workers" in s;
  const sessions=s.remotes||s.sessions||[];
  fill("sessions",sessions.map(r=>[sessionClass(r),(workers?[String(r.worker??"")]:[]).concat(sessionCells(r,now))]));
  fill("services",(s.services||[]).map(r=>[serviceClass(r,now),serviceCells(r,now)]));
  const st=document.getElementById("state");st.textContent=stateLine(s);
  st.className=s.ready?"ready":"not";}
async function tick(){try{
    const [s,h]=await Promise.all(["/status","/status/history"].map(p=>
      fetch(p,{cache:"no-store"}).then(r=>{
        if(!r.ok)throw new Error("HTTP "+r.status);return r.json();})));
    draw(s);charts(h);text("updated","updated "+new Date().toLocaleTimeString());
  }catch(e){const st=document.getElementById("state");
    st.textContent="no answer from the process ("+String(e.message||e).slice(0,80)+")";
    st.className="not";}}
tick();setInterval(tick,1000);
})();
"""
