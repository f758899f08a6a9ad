/* Portico analytics snippet: pageviews (incl. SPA), tracked clicks, outbound clicks, time on page, custom events. No cookies, no third-party code. */
(function(w,d,n){"use strict";
var s=d.currentScript,c=s?s.dataset:{},E=c.endpoint||"/_portico/b",q=[],t=null,shown=Date.now(),vis=0,sel=c.selectors||"",last="";
if((c.dnt==="1"&&(n.doNotTrack==="1"||w.doNotTrack==="1"))||(c.gpc==="1"&&n.globalPrivacyControl)){w.portico={track:function(){}};return}
function u(){return location.pathname+location.search}
function send(){t&&clearTimeout(t);t=null;if(!q.length)return;var b=JSON.stringify({events:q});q=[];
if(!(n.sendBeacon&&n.sendBeacon(E,b))){try{fetch(E,{method:"POST",body:b,keepalive:true,credentials:"same-origin"})}catch(e){}}}
function add(e,now){e.url=e.url||u();e.ts=Date.now();q.push(e);if(now||q.length>=20)send();else if(!t)t=setTimeout(send,1000)}
function pv(spa){var p=u();if(p===last)return;last=p;add({type:"pageview",ref:spa?"":d.referrer,spa:!!spa,title:(d.title||"").slice(0,120)})}
function eng(){var ms=vis+(d.visibilityState==="visible"?Date.now()-shown:0);if(ms>0)add({type:"engagement",ms:ms});vis=0;shown=Date.now()}
["pushState","replaceState"].forEach(function(k){var o=history[k];history[k]=function(){var r=o.apply(this,arguments);eng();pv(1);return r}});
w.addEventListener("popstate",function(){eng();pv(1)});
d.addEventListener("click",function(ev){var x=ev.target,el,a;if(!x||!x.closest)return;
if(sel){try{el=x.closest(sel)}catch(e){}}
if(el)add({type:"click",sel:sel,track:(el.getAttribute("data-track")||"").slice(0,100),tag:el.tagName.toLowerCase(),text:(el.textContent||"").trim().slice(0,100)},1);
a=x.closest("a[href]");if(a&&/^https?:$/.test(a.protocol)&&a.host!==location.host)add({type:"outbound",href:a.href},1)},true);
d.addEventListener("visibilitychange",function(){if(d.visibilityState==="hidden"){vis+=Date.now()-shown;eng();send()}else shown=Date.now()});
w.addEventListener("pagehide",function(){eng();send()});
w.portico={track:function(name,props){add({type:"custom",name:String(name),props:props||{}},1)}};
pv(0)})(window,document,navigator);
