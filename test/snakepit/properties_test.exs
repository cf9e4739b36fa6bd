# The generators and models, in an .exs loaded here rather than an .ex
# under test/support: compiled with the app, its calls into PropEr (not an
# application Snakepit depends on) would be warnings, which
# `mix compile --warnings-as-errors` refuses.
Code.require_file("../support/generators.exs", __DIR__)

defmodule Snakepit.PropertiesTest do
  # Properties of what crosses the pipe ("What crosses the pipe" in
  # Snakepit's moduledoc), checked by PropEr (Debian's erlang-proper, which
  # scripts/bootstrap installs) over generated terms: the generators and the
  # models (a term's image, a key as Python compares it, a path as the codec
  # writes it) are in test/support/generators.exs.
  #
  # PROPER_NUMTESTS=n runs n cases of each property against a worker
  # (default 200) and 10n of each property of the codec alone.
  use ExUnit.Case, async: true
  import Snakepit.TestPools

  alias Snakepit.Error
  alias Snakepit.Generators, as: G
  alias Snakepit.Native

  defp worker_cases do
    case System.get_env("PROPER_NUMTESTS") do
      nil -> 200
      n -> String.to_integer(n)
    end
  end

  # The default 60 s for the default 200 cases (each test takes a few
  # seconds at most), more for more.
  @moduletag timeout: max(60_000, 100 * String.to_integer(System.get_env("PROPER_NUMTESTS", "0")))

  defp codec_cases, do: 10 * worker_cases()

  setup context do
    if context[:pool], do: %{pool: start_pool(size: 1)}, else: :ok
  end

  ## Round trips

  test "the codec returns a sendable term as its image" do
    check(G.term(), codec_cases(), fn term ->
      expect(Native.codec_roundtrip(term), {:ok, G.image(term)})
    end)
  end

  @tag :pool
  test "echo through a worker returns a sendable term as its image", %{pool: pool} do
    check(G.term(), worker_cases(), fn term ->
      expect(Snakepit.execute("echo", %{value: term}, pool: pool), {:ok, G.image(term)})
    end)
  end

  ## Refusals

  test "the codec refuses an unsendable term and names where it is" do
    check({G.unsendable(), G.path()}, codec_cases(), fn {{bad, what}, path} ->
      {term, at} = G.place(bad, path)
      expect(Native.codec_roundtrip(term), {:error, "#{what} at #{at}"})
    end)
  end

  @tag :pool
  test "a call with an unsendable term is refused where it is, and never sent", %{pool: pool} do
    check({G.unsendable(), G.path()}, worker_cases(), fn {{bad, what}, path} ->
      {term, at} = G.place(bad, path)
      before = {Snakepit.get_stats(pool), served(pool)}
      result = Snakepit.execute("echo", %{value: term}, pool: pool)
      {stats, served} = {Snakepit.get_stats(pool), served(pool)}
      {old_stats, old_served} = before

      with :ok <- expect_refusal(result, what, "args[:value]#{at}") do
        counted = %{
          validation_errors: stats.validation_errors - old_stats.validation_errors,
          completed: stats.completed - old_stats.completed,
          served_by_workers: served - old_served
        }

        if counted == %{validation_errors: 1, completed: 0, served_by_workers: 0},
          do: :ok,
          else: {:error, "the pool counted #{inspect(counted)}"}
      end
    end)
  end

  test "the codec refuses two keys of one map that Python takes for one, naming the map" do
    check(
      {G.colliding_keys(:scalar), G.map_of(G.key(), G.scalar()), G.path()},
      codec_cases(),
      &expect_collision_refused/1
    )
  end

  ## Found by these properties, and fixed

  # An atom with a code point above 255 in its name made the NIF panic
  # (rustler reads atom names as Latin-1 on OTP 25). Smallest
  # counterexample: :"Ā".
  test "an atom named beyond Latin-1 crosses as a string" do
    check({G.unicode_atom(), G.path()}, codec_cases(), fn {atom, path} ->
      {term, _} = G.place(atom, path)
      expect(Native.codec_roundtrip(term), {:ok, G.image(term)})
    end)
  end

  # Lists and tuples were compared by their encoding only, so
  # %{[1] => "a", [1.0] => "b"} was sent and Python kept one entry.
  test "list or tuple keys that Python takes for one are refused" do
    check(
      {G.colliding_keys(:container), G.map_of(G.key(), G.scalar()), G.path()},
      codec_cases(),
      &expect_collision_refused/1
    )
  end

  ## Helpers

  # The two keys in a map with other keys (none of them equal to those in
  # Python), placed at `path`: the codec names the map's path.
  defp expect_collision_refused({{k1, k2}, others, path}) do
    others = others |> Enum.reject(fn {k, _} -> G.py_key(k) == G.py_key(k1) end) |> Map.new()
    map = Map.merge(others, %{k1 => "first", k2 => "second"})
    # place/2 wraps a placeholder (a reference: no sibling key equals it),
    # then the map takes its place.
    placeholder = make_ref()
    {wrapped, at} = G.place(placeholder, path)
    term = put_in_placeholder(wrapped, placeholder, map)
    {a, b} = {G.key_text(k1), G.key_text(k2)}

    case Native.codec_roundtrip(term) do
      {:error, message} ->
        if message in [
             "map keys #{a} and #{b}, which are one key in Python, at #{at}",
             "map keys #{b} and #{a}, which are one key in Python, at #{at}"
           ],
           do: :ok,
           else: {:error, "refused with #{inspect(message)}, expected keys #{a}, #{b} at #{at}"}

      other ->
        {:error, "not refused: #{inspect(other)}"}
    end
  end

  defp put_in_placeholder(ref, ref, map), do: map

  defp put_in_placeholder(list, ref, map) when is_list(list),
    do: Enum.map(list, &put_in_placeholder(&1, ref, map))

  defp put_in_placeholder(tuple, ref, map) when is_tuple(tuple),
    do: tuple |> Tuple.to_list() |> put_in_placeholder(ref, map) |> List.to_tuple()

  defp put_in_placeholder(m, ref, map) when is_map(m),
    do:
      Map.new(m, fn {k, v} ->
        {put_in_placeholder(k, ref, map), put_in_placeholder(v, ref, map)}
      end)

  defp put_in_placeholder(other, _, _), do: other

  defp expect(got, expected) do
    if G.same?(got, expected),
      do: :ok,
      else:
        {:error, "expected #{inspect(expected, limit: 50)}\n     got #{inspect(got, limit: 50)}"}
  end

  defp expect_refusal(got, what, path) do
    message = "cannot send #{what} at #{path} to a worker"

    case got do
      {:error, %Error{category: :validation, message: ^message, details: %{path: ^path}}} ->
        :ok

      other ->
        {:error,
         "expected a :validation error at #{path}: #{inspect(message)}\n     got #{inspect(other)}"}
    end
  end

  # Runs a property of `fun` over `gen` (fun returns :ok or {:error, why})
  # and fails with PropEr's report, the shrunk counterexample and why it
  # fails.
  defp check(gen, numtests, fun) do
    {:ok, out} = StringIO.open("")
    on_output = fn format, args -> IO.write(out, report_line(format, args)) end
    property = :proper.forall(gen, fn input -> safely(fun, input) == :ok end)

    result = :proper.counterexample(property, [{:numtests, numtests}, {:on_output, on_output}])

    {:ok, {_, report}} = StringIO.close(out)

    case result do
      true ->
        :ok

      [counterexample] ->
        why =
          case safely(fun, counterexample) do
            {:error, why} -> why
            :ok -> "(it passes when run again)"
          end

        flunk("""
        property failed (#{numtests} cases). PropEr:
        #{report}
        shrunk counterexample: #{inspect(counterexample, limit: 50)}
        #{why}
        """)

      other ->
        flunk("PropEr could not check the property: #{inspect(other)}\n#{report}")
    end
  end

  # PropEr's output without colours, each piece cut to 400 characters (it
  # prints the first failing input in full, before shrinking).
  defp report_line(format, args) do
    text = format |> :io_lib.format(args) |> IO.chardata_to_string()
    text = String.replace(text, ~r/\e\[[0-9;]*m/, "")

    if String.length(text) > 400,
      do: String.slice(text, 0, 400) <> " ...(cut)\n",
      else: text
  end

  defp safely(fun, input) do
    fun.(input)
  rescue
    e -> {:error, "raised #{Exception.format(:error, e, __STACKTRACE__)}"}
  end
end
