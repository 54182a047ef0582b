# plot.gp - the plot of scripts/bench: MB/s per workload and system, as
# grouped bars on a log scale.
#   gnuplot -e "datafile='...'; outfile='...'; machine='...'" plot.gp
set terminal pngcairo size 1000,460 font ",10"
set output outfile
set title "Read throughput, MB/s (log scale; higher is better)\n".machine
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set logscale y
set yrange [1:*]
set grid ytics
set key top left horizontal
set datafile missing "-"
set xtics nomirror
set key autotitle columnheader
plot datafile using 2:xtic(1) lc rgb "#1f77b4", \
	'' using 3 lc rgb "#7f7f7f", \
	'' using 4 lc rgb "#c7c7c7", \
	'' using 5 lc rgb "#9467bd", \
	'' using 6 lc rgb "#ff7f0e", \
	'' using 7 lc rgb "#2ca02c", \
	'' using 8 lc rgb "#d62728"
