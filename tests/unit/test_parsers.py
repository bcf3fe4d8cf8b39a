"""Parsers of the components' own status output: `supervisorctl status` and HAProxy's `show stat` CSV."""

from __future__ import annotations

from djship.components.balancer import parse_stat
from djship.components.supervisor import ProcessStatus, parse_status

# As supervisorctl 4.2 prints it: the name padded to 33 columns, the state to 10, then the description (empty
# for STARTING, which leaves the line ending in spaces).
SUPERVISORCTL_STATUS = "\n".join([
    "app1-gunicorn                    RUNNING   pid 4242, uptime 0:03:17",
    "app1-nginx                       RUNNING   pid 4243, uptime 1 day, 2:03:04",
    "app2-gunicorn                    STARTING  ",
    "app2-nginx                       STOPPED   Not started",
    "haproxy                          FATAL     Exited too quickly (process log may have details)",
    "postgres                         STOPPED   Jan 01 12:00 PM",
]) + "\n"

# The header HAProxy 2.6 prints for `show stat` (129 columns, with a trailing comma); the rows are a real
# answer for a frontend `https` and backend `app_servers` with app1 UP and serving 3 sessions, app2 DOWN.
SHOW_STAT = """\
# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,h1_spliced_bytes_out,
http,FRONTEND,,,0,0,9985,0,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,0,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,0,0,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
https,FRONTEND,,,3,5,9985,120,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,0,,,,0,0,0,0,0,0,,0,0,0,,,0,0,0,0,,,,,,,,,,,,,,,,,,,,,http,,0,0,0,0,0,0,0,,,0,0,,,,,,,0,,,,,,,,,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
app_servers,app1,0,0,3,5,,120,0,0,,0,,0,0,0,0,UP,1,1,0,0,0,60,0,,1,3,1,,0,,2,0,,0,L7OK,200,1,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer7 check passed,,1,1,2,,,,127.0.1.1:8000,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
app_servers,app2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,4,4,,1,3,2,,0,,2,0,,0,L4CON,,0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,Layer4 connection problem,,1,1,0,,,,127.0.1.2:8000,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,
app_servers,BACKEND,0,0,3,0,999,120,0,0,0,0,,0,0,0,0,UP,0,0,0,,1,4,4,,1,3,0,,0,,1,0,,0,,,,0,0,0,0,0,0,,,,0,0,0,0,0,0,0,-1,,,0,0,0,0,,,,,,,,,,,,,,http,roundrobin,,,,,,,0,0,0,0,0,,,0,0,0,0,0,,,,,0,0,0,0,-,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,38,38,3927,154,0,0,

"""


def test_parse_status_reads_every_program():
    statuses = parse_status(SUPERVISORCTL_STATUS)

    assert list(statuses) == ["app1-gunicorn", "app1-nginx", "app2-gunicorn", "app2-nginx", "haproxy", "postgres"]
    assert statuses["app1-gunicorn"] == ProcessStatus("app1-gunicorn", "RUNNING", 4242, "pid 4242, uptime 0:03:17")
    assert statuses["app1-nginx"].pid == 4243
    assert statuses["app2-gunicorn"] == ProcessStatus("app2-gunicorn", "STARTING", None, "")
    assert statuses["app2-nginx"] == ProcessStatus("app2-nginx", "STOPPED", None, "Not started")
    assert statuses["haproxy"] == ProcessStatus(
        "haproxy", "FATAL", None, "Exited too quickly (process log may have details)"
    )
    assert statuses["postgres"] == ProcessStatus("postgres", "STOPPED", None, "Jan 01 12:00 PM")


def test_parse_status_ignores_lines_that_are_not_a_program():
    output = "unix:///srv/site/.djship/supervisor/supervisor.sock no such file\n\n"

    assert parse_status(output) == {}


def test_parse_stat_reads_the_servers_of_the_backend():
    servers = parse_stat(SHOW_STAT)

    assert list(servers) == ["app1", "app2"]
    assert (servers["app1"].status, servers["app1"].check, servers["app1"].sessions) == ("UP", "L7OK", 3)
    assert (servers["app2"].status, servers["app2"].check, servers["app2"].sessions) == ("DOWN", "L4CON", 0)


def test_parse_stat_of_another_backend_is_empty():
    assert parse_stat(SHOW_STAT, backend="other") == {}


def _with_frontend_counters(requests: int, failed: int) -> str:
    header, *rows = SHOW_STAT.splitlines()
    columns = header.lstrip("# ").split(",")
    edited = []
    for row in rows:
        cells = row.split(",")
        if cells[:2] == ["https", "FRONTEND"]:
            cells[columns.index("req_tot")], cells[columns.index("hrsp_5xx")] = str(requests), str(failed)
        edited.append(",".join(cells))
    return "\n".join([header, *edited]) + "\n"


def test_the_https_frontends_counters_say_what_a_change_served_and_failed():
    from djship.components.balancer import Traffic, parse_traffic

    before, after = parse_traffic(_with_frontend_counters(1000, 1)), parse_traffic(_with_frontend_counters(13404, 3))
    assert (before.requests, before.failed) == (1000, 1)
    assert after.since(before) == Traffic(12404, 2)
    assert after.since(before).line("the deploy") == "12,404 requests during the deploy, 2 failed"
    # A reload starts a new HAProxy worker counting from zero: what it counted is a lower bound.
    reloaded = Traffic(50, 0).since(before)
    assert reloaded == Traffic(50, 0, restarted=True)
    assert reloaded.line("the scale").startswith("at least 50 requests during the scale, 0 failed (the balancer reloaded")
    assert parse_traffic("# pxname,svname\n") == Traffic(0, 0)
