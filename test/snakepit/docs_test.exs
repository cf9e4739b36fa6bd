defmodule Snakepit.DocsTest do
  # Keeps the docs that name code in step with the code. What exists is taken
  # from the code itself: the modules compiled from lib/, the functions
  # Snakepit.Native exports, and the Rust files under native/*/src/.
  #
  # Checked: every `Snakepit.Foo` module and every `Module.fun/arity` (or a
  # bare `fun/arity` naming a NIF) in backticks in README.md and
  # docs/architecture.md and docs/api.md; every module and Rust file named in the README's
  # module tree (the fenced block with the native/ lines); and that the tree
  # names every module and every Rust file that exists.
  use ExUnit.Case, async: true

  @root Path.expand("../..", __DIR__)
  @readme "README.md"
  @checked [@readme, "docs/architecture.md", "docs/api.md"]

  # `Snakepit.Pool`, `%Snakepit.Error{}`, `Mix.Tasks.Snakepit.Doctor`.
  @module_ref ~r/(?<![\w.])((?:Mix\.Tasks\.)?Snakepit(?:\.[A-Z]\w*)*)/
  # `Snakepit.execute/3`, `Native.cancel/2`, `submit_dirty/7`.
  @function_ref ~r/(?<![\w.:%])((?:[A-Z]\w*\.)*)([a-z_]\w*[?!]?)\/(\d+)/
  # `native/snakepit_nif/src/lib.rs`, `worker.rs`, `dispatcher/tests.rs`.
  @rust_file ~r/(?<![\w\/.])((?:[\w.]+\/)*\w+\.rs)\b/

  test "the modules and functions named in backticks exist" do
    problems =
      for file <- @checked,
          span <- backticked(read(file)),
          problem <- module_problems(span) ++ function_problems(span) ++ rust_problems(span),
          uniq: true,
          do: "#{file}: #{problem}"

    assert problems == [], Enum.join(problems, "\n")
  end

  test "the README's module tree names only modules and Rust files that exist" do
    {modules, rust_files, text} = tree()

    problems =
      Enum.flat_map(modules, &module_problems/1) ++
        for(
          path <- rust_files,
          not File.regular?(Path.join(@root, path)),
          do: "#{path} is listed, but there is no such file"
        ) ++ function_problems(text)

    assert problems == [], Enum.map_join(problems, "\n", &"#{@readme} module tree: #{&1}")
  end

  test "the README's module tree names every module and every Rust file" do
    {modules, rust_files, _text} = tree()

    missing =
      Enum.map(lib_modules() -- modules, &"#{inspect(&1)} (#{source(&1)})") ++
        (existing_rust_files() -- rust_files)

    assert missing == [],
           "missing from the module tree in #{@readme} (add a line saying what each is):\n" <>
             Enum.join(missing, "\n")
  end

  # What exists

  defp lib_modules do
    lib = Path.join(@root, "lib") <> "/"
    {:ok, modules} = :application.get_key(:snakepit, :modules)

    modules
    |> Enum.filter(&String.starts_with?(source(&1), lib))
    # Protocol implementations (String.Chars.Snakepit.Error...) are not modules of ours.
    |> Enum.reject(&function_exported?(&1, :__impl__, 1))
    |> Enum.sort()
  end

  defp source(module), do: module.module_info(:compile)[:source] |> to_string()

  defp existing_rust_files do
    Path.wildcard(Path.join(@root, "native/*/src/**/*.rs"))
    |> Enum.map(&Path.relative_to(&1, @root))
    |> Enum.sort()
  end

  # Parsing

  defp read(file), do: File.read!(Path.join(@root, file))

  # Backticked spans outside fenced code blocks.
  defp backticked(text) do
    text
    |> String.replace(~r/^```.*?^```/ms, "")
    |> then(&Regex.scan(~r/`([^`\n]+)`/, &1, capture: :all_but_first))
    |> List.flatten()
  end

  # {modules, Rust files as paths from the root, the block's text}. A line
  # starting with native/CRATE/ opens that crate: the Rust files named on it
  # and on the indented lines below it are in native/CRATE/src/.
  defp tree do
    block =
      Regex.scan(~r/^```\w*\n(.*?)^```/ms, read(@readme), capture: :all_but_first)
      |> List.flatten()
      |> Enum.find(&(&1 =~ ~r/^native\//m)) ||
        flunk("#{@readme}: no module tree (a fenced block with lines starting with native/)")

    {_, rust_files} =
      block
      |> String.split("\n")
      |> Enum.reduce({nil, []}, fn line, {crate_src, acc} ->
        crate_src =
          case Regex.run(~r/^native\/(\w+)\//, line) do
            [_, crate] -> "native/#{crate}/src"
            nil -> if line =~ ~r/^\S/, do: nil, else: crate_src
          end

        files =
          for [name] <- Regex.scan(@rust_file, line, capture: :all_but_first) do
            cond do
              String.starts_with?(name, "native/") -> name
              crate_src -> Path.join(crate_src, name)
              true -> "#{name} (not under a native/CRATE/ line)"
            end
          end

        {crate_src, acc ++ files}
      end)

    modules =
      Regex.scan(@module_ref, block, capture: :all_but_first)
      |> List.flatten()
      |> Enum.uniq()
      |> Enum.map(&Module.concat([&1]))

    {modules, Enum.uniq(rust_files), block}
  end

  # Checks

  defp module_problems(module) when is_atom(module) do
    if Code.ensure_loaded?(module), do: [], else: ["#{inspect(module)} is not a module"]
  end

  defp module_problems(text) do
    Regex.scan(@module_ref, text, capture: :all_but_first)
    |> List.flatten()
    |> Enum.flat_map(&module_problems(Module.concat([&1])))
  end

  defp function_problems(text) do
    for [ref, prefix, name, arity] <- Regex.scan(@function_ref, text),
        module = resolve(prefix, name),
        module != nil,
        not exported?(module, name, String.to_integer(arity)),
        do: "#{ref} does not exist#{hint(module, name)}"
  end

  # The module a reference is about, or nil when it is not one of ours.
  defp resolve("", name), do: if(nif?(name), do: Snakepit.Native)
  defp resolve("Native.", _name), do: Snakepit.Native
  defp resolve("Snakepit." <> _ = prefix, _name), do: prefix_module(prefix)
  defp resolve("Mix.Tasks.Snakepit." <> _ = prefix, _name), do: prefix_module(prefix)
  defp resolve(_other, _name), do: nil

  defp prefix_module(prefix), do: Module.concat([String.trim_trailing(prefix, ".")])

  defp nif?(name),
    do: Enum.any?(Snakepit.Native.__info__(:functions), &(to_string(elem(&1, 0)) == name))

  defp exported?(module, name, arity) do
    Code.ensure_loaded?(module) and
      Enum.any?(functions(module), &(&1 == {name, arity}))
  end

  defp functions(module) do
    (module.__info__(:functions) ++ module.__info__(:macros))
    |> Enum.map(fn {name, arity} -> {to_string(name), arity} end)
  end

  defp hint(module, name) do
    if Code.ensure_loaded?(module) do
      case for({^name, arity} <- functions(module), do: "#{name}/#{arity}") do
        [] -> " (#{inspect(module)} has no #{name})"
        found -> " (#{inspect(module)} has #{Enum.join(found, ", ")})"
      end
    else
      " (#{inspect(module)} is not a module)"
    end
  end

  # A Rust file named in backticks: a path from the root, or a file name
  # that some crate has.
  defp rust_problems(span) do
    for [name] <- Regex.scan(@rust_file, span, capture: :all_but_first),
        not rust_file?(name),
        do: "#{name} is not a Rust file under native/*/src/"
  end

  defp rust_file?(name) do
    if String.contains?(name, "/") and String.starts_with?(name, "native/") do
      File.regular?(Path.join(@root, name))
    else
      Enum.any?(existing_rust_files(), &String.ends_with?(&1, "/" <> name))
    end
  end
end
