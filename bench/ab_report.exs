# Reads the rounds `scripts/ab` recorded (lines "ref %{...}" / "head %{...}")
# and prints each measure's median for both sides and the ratio HEAD / REF.
#
#   elixir bench/ab_report.exs RESULTS_FILE REF_NAME LOADAVG

[file, ref, load] = System.argv()

rounds =
  file
  |> File.read!()
  |> String.split("\n", trim: true)
  |> Enum.map(fn line ->
    [side, map] = String.split(line, " ", parts: 2)
    {result, _} = Code.eval_string(map)
    {side, result}
  end)

median = fn xs ->
  sorted = Enum.sort(xs)
  n = length(sorted)

  if rem(n, 2) == 1,
    do: Enum.at(sorted, div(n, 2)),
    else: (Enum.at(sorted, div(n, 2) - 1) + Enum.at(sorted, div(n, 2))) / 2
end

side = fn name -> for {^name, r} <- rounds, do: r end
[refs, heads] = [side.("ref"), side.("head")]

# Higher is better for calls/s, lower for the rest (times, CPU per call).
measures = [
  {"tiny_p50", "tiny p50 (µs)", :lower},
  {"tiny_mean", "tiny mean (µs)", :lower},
  {"1kb_p50", "1 KB p50 (µs)", :lower},
  {"1mb_p50", "1 MB p50 (µs)", :lower},
  {"cps_1", "calls/s, 1 caller", :higher},
  {"cps_8", "calls/s, 8 callers", :higher},
  {"cps_64", "calls/s, 64 callers", :higher},
  {"cps_p4_1", "calls/s, 1 caller, depth 4", :higher},
  {"cps_p4_8", "calls/s, 8 callers, depth 4", :higher},
  {"cps_p4_64", "calls/s, 64 callers, depth 4", :higher},
  {"cpu_64", "CPU µs/call, 64 callers", :lower},
  {"cpu_p4_64", "CPU µs/call, 64 callers, depth 4", :lower}
]

fmt = fn x -> if x >= 100, do: "#{round(x)}", else: "#{Float.round(x * 1.0, 1)}" end
rx = fn x -> "#{Float.round(x * 1.0, 2)}x" end
row = fn cells -> IO.puts("| " <> Enum.join(cells, " | ") <> " |") end

IO.puts("\n# A/B: HEAD (working tree) against #{ref}, #{length(heads)} rounds each\n")
IO.puts("Medians over rounds. HEAD / Port is the same round's Port pool (the same")
IO.puts("program on both sides: if its column moves, the machine changed mode).\n")
row.(["measure", ref, "HEAD", "HEAD / #{ref}", "", "REF / Port", "HEAD / Port"])
row.(List.duplicate("---", 7))

for {key, label, better} <- measures do
  r = median.(Enum.map(refs, & &1[key]))
  h = median.(Enum.map(heads, & &1[key]))
  ratio = h / r
  worse = if better == :lower, do: ratio > 1.1, else: ratio < 1 / 1.1
  port_key = "port_" <> String.replace(key, "_p4", "")

  {rp, hp} =
    case Map.fetch(hd(heads), port_key) do
      {:ok, _} ->
        {rx.(median.(Enum.map(refs, &(&1[key] / &1[port_key])))),
         rx.(median.(Enum.map(heads, &(&1[key] / &1[port_key]))))}

      :error ->
        {"", ""}
    end

  row.([
    label,
    fmt.(r),
    fmt.(h),
    "#{Float.round(ratio, 2)}",
    if(worse, do: "WORSE", else: ""),
    rp,
    hp
  ])
end

IO.puts("\nload average after: #{load}")
